"""An in-memory Store and units of work with the PostgreSQL adapter's contract."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import orjson

from worker.domain.account import Account
from worker.domain.balance import BalanceState
from worker.domain.events import LedgerEntry, PostpayCharge, ReminderDue
from worker.domain.invoicing import Invoice
from worker.service.ports import Changes, Dead, EventKey, OutboxMessage


@dataclass
class Committed:
    """What the fake database holds: only what a unit of work committed."""

    accounts: dict[str, Account] = field(default_factory=dict)
    processed: dict[EventKey, bytes] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    postpay: dict[str, PostpayCharge] = field(default_factory=dict)  # by event id
    invoiced: dict[str, str] = field(default_factory=dict)  # usage event id -> invoice id
    invoices: list[Invoice] = field(default_factory=list)
    closes: dict[str, int] = field(default_factory=dict)  # period -> invoices
    marks: dict[str, dict[str, int]] = field(default_factory=dict)
    usage: dict[tuple[str, date], int] = field(default_factory=dict)  # (account, day) -> JPY
    usage_loads: list[dict[str, date]] = field(default_factory=list)  # what each load asked


class FakeUnitOfWork:
    """Works on a copy of the committed state; the store swaps it in on a clean exit."""

    def __init__(self, db: Committed) -> None:
        self.db = copy.deepcopy(db)
        self.created: set[str] = set()
        self.read_event_ids: tuple[str, ...] = ()

    async def lock_accounts(
        self, account_ids: Sequence[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, Account]:
        for account_id in account_ids:
            if account_id not in self.db.accounts:
                self.db.accounts[account_id] = Account(account_id)
                self.created.add(account_id)
        return {a: copy.deepcopy(self.db.accounts[a]) for a in account_ids}

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        return {k: self.db.processed[k] for k in keys if k in self.db.processed}

    async def load_usage(self, since: Mapping[str, date]) -> dict[str, dict[date, int]]:
        self.db.usage_loads.append(dict(since))
        usage: dict[str, dict[date, int]] = {}
        for (account_id, day), amount in self.db.usage.items():
            if account_id in since and day >= since[account_id]:
                usage.setdefault(account_id, {})[day] = amount
        return usage

    async def accounts_due_for_expiry(
        self, cutoff: datetime, lateness: timedelta, notice: timedelta, limit: int
    ) -> list[str]:
        due = [
            account.account_id
            for account in self.db.accounts.values()
            if any(
                not lot.forfeited
                and lot.remaining_jpy > 0
                and (
                    lot.expires_at <= cutoff - lateness
                    or (not lot.expiring_notified and lot.expires_at - notice <= cutoff)
                )
                for lot in account.lots
            )
        ]
        return sorted(due)[:limit]

    async def save(self, changes: Changes) -> None:
        for account in changes.accounts:
            self.db.accounts[account.account_id] = copy.deepcopy(account)
        # As the PostgreSQL store: a usage event is recorded by its charge entry (refused
        # without one), an account event by itself; both land in one map here.
        changes.usage_by_charge()
        for item in changes.processed:
            self.db.processed[item.key] = item.fingerprint
        self.db.ledger.extend(changes.effects.ledger)
        for key, amount in changes.effects.usage.items():
            self.db.usage[key] = self.db.usage.get(key, 0) + amount
        for charge in changes.effects.postpay:
            self.db.postpay[charge.event_id] = charge
        self.db.outbox.extend(changes.outbox)

    async def claim_month(self, period: str) -> bool:
        if period in self.db.closes:
            return False
        self.db.closes[period] = 0
        return True

    async def uninvoiced_usage(self, period: str) -> list[PostpayCharge]:
        usage = [
            charge
            for event_id, charge in sorted(self.db.postpay.items())
            if event_id not in self.db.invoiced and charge.period <= period
        ]
        self.read_event_ids = tuple(u.event_id for u in usage)
        return usage

    async def save_invoices(
        self,
        period: str,
        invoices: Sequence[Invoice],
        issued_at: datetime,
        outbox: Sequence[OutboxMessage],
    ) -> None:
        by_account = {i.account_id: i.invoice_id for i in invoices}
        for event_id in self.read_event_ids:
            self.db.invoiced[event_id] = by_account[self.db.postpay[event_id].account_id]
        self.db.invoices.extend(invoices)
        self.db.closes[period] = len(invoices)
        self.db.outbox.extend(outbox)


class FakeStore:
    """Implements `worker.service.ports.Store`; `units` counts the units of work opened."""

    def __init__(self) -> None:
        self.db = Committed()
        self.units = 0

    @asynccontextmanager
    async def _unit(self) -> AsyncIterator[FakeUnitOfWork]:
        self.units += 1
        uow = FakeUnitOfWork(self.db)
        yield uow  # an exception leaves self.db as it was: rolled back
        self.db = uow.db

    def unit_of_work(self) -> AbstractAsyncContextManager[FakeUnitOfWork]:
        return self._unit()

    def close_unit_of_work(self) -> AbstractAsyncContextManager[FakeUnitOfWork]:
        return self._unit()

    async def is_closed(self, period: str) -> bool:
        return period in self.db.closes

    async def mark_end_offsets(self, period: str, end_offsets: dict[str, int]) -> dict[str, int]:
        return self.db.marks.setdefault(period, dict(end_offsets))

    async def oldest_uninvoiced_period(self) -> str | None:
        open_periods = [c.period for e, c in self.db.postpay.items() if e not in self.db.invoiced]
        return min(open_periods, default=None)

    async def closed_periods(self, periods: Sequence[str]) -> set[str]:
        return {p for p in periods if p in self.db.closes}


class FakeEncoder:
    """Outbox messages that name what they carry, so tests can read them back."""

    def reminder(self, reminder: ReminderDue) -> OutboxMessage:
        payload = orjson.dumps(reminder)
        return OutboxMessage(reminder.reminder_id, "reminders", reminder.account_id, payload)

    def dead_letter(self, dead: Dead, failed_at: datetime) -> OutboxMessage:
        record = dead.record
        message_id = f"dlq:{record.topic}:{record.partition}:{record.offset}"
        return OutboxMessage(message_id, "dlq", dead.code, b"")

    def balance(self, state: BalanceState, previous_version: int) -> OutboxMessage:
        message_id = f"{state.account_id}:balance:{state.version}"
        return OutboxMessage(message_id, "balances", state.account_id, orjson.dumps(state))

    def invoice(self, invoice: Invoice, issued_at: datetime, zone: object) -> OutboxMessage:
        return OutboxMessage(invoice.invoice_id, "invoices", invoice.account_id, b"")
