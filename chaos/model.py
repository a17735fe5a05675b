"""The reference model: what the worker must end with, computed by the pure domain alone.

Input is the exact list of records in the input topics (read back after the run, so every
re-send the producer made is counted) and the scenario that says what each record is. Each
account's records are applied in production order (= `occurred_at` order by construction, see
`scenario`) with the worker's rules for re-sends: the same event_id with the same payload is
skipped, with another payload it is dead-lettered as a conflict. A record's Kafka timestamp is
its arrival: lots pay it only if it arrived in time, and notices and forfeitures whose moment
passed before it arrived go in front of it, as the stream puts them. The month is closed for every
account just before its first record produced after the close gate, lots are swept just before
each expiry that has passed and once more at the end (the worker's sweeps run on a timer; for
the accounts that have expiring lots nothing else happens after phase 0, so only the order of
sweeps matters, not their instants).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from chaos.scenario import Item, ScenarioError
from worker.domain.account import Account, OpenInvoice, Policy
from worker.domain.commands import ChargeUsage
from worker.domain.errors import Rejected
from worker.domain.events import Effects, LedgerEntry, PostpayCharge, ReminderDue
from worker.domain.expiry import before_arrival, sweep
from worker.domain.invoicing import Invoice, build_invoice, closing_window

Position = tuple[str, int, int]  # topic, partition, offset
EventKey = tuple[str, str]  # source, event_id


@dataclass(frozen=True)
class Record:
    """One record as it sits in an input topic."""

    item: Item
    topic: str
    partition: int
    offset: int
    arrived_at: datetime | None = None  # its Kafka timestamp; None: in time for every lot

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass
class Expected:
    accounts: dict[str, Account] = field(default_factory=dict)
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    reminders: dict[str, ReminderDue] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    paid: dict[str, int] = field(default_factory=dict)
    postpay: dict[str, tuple[PostpayCharge, str | None]] = field(default_factory=dict)
    processed: dict[EventKey, Position] = field(default_factory=dict)
    duplicates: dict[Position, Position] = field(default_factory=dict)  # re-send -> applied one
    dead: dict[Position, str] = field(default_factory=dict)


class _AccountReplay:
    """One account's records through Account.apply, the close and the sweeps."""

    def __init__(self, account_id: str, policy: Policy, period: str, out: Expected) -> None:
        self.account = Account(account_id)
        self.effects = Effects()
        self.policy = policy
        self.period = period
        self.out = out
        self.seen: dict[EventKey, Record] = {}
        self.invoiced: dict[str, str] = {}

    def run(self, records: Sequence[Record], close_seq: int, end: datetime | None) -> None:
        closed = False
        for record in records:
            if not closed and record.item.seq >= close_seq:
                self.close()
                closed = True
            self.apply(record)
        if not closed:
            self.close()
        if end is not None:
            self.sweeps(end)
        self.collect()

    def apply(self, record: Record) -> None:
        item = record.item
        assert item.command is not None
        key = (item.source, item.command.event_id)
        prior = self.seen.get(key)
        if prior is not None:
            if prior.item.token == item.token:
                self.out.duplicates[record.position] = prior.position
            else:
                self.out.dead[record.position] = "conflicting_duplicate"
            return
        if item.label == "conflict":
            raise ScenarioError(f"conflict {record.position} would be applied: no original")
        command = item.command
        if record.arrived_at is not None:
            before_arrival(self.account, record.arrived_at, self.policy, self.effects)
            if isinstance(command, ChargeUsage):
                command = replace(command, arrived_at=record.arrived_at)
        try:
            self.account.apply(command, self.policy, self.effects)
        except Rejected as exc:
            self.out.dead[record.position] = exc.code
            return
        self.seen[key] = record
        self.out.processed[key] = record.position

    def close(self) -> None:
        """The month-close timer after an outage: every month of the window, in order."""
        for period in closing_window(self.period):
            usage = [
                c
                for c in self.effects.postpay
                if c.period <= period and c.event_id not in self.invoiced
            ]
            invoice = build_invoice(self.account.account_id, period, usage, self.policy.zone)
            if invoice is None:
                continue
            self.out.invoices[invoice.invoice_id] = invoice
            self.account.invoices[invoice.invoice_id] = OpenInvoice(
                invoice.invoice_id, invoice.total_jpy
            )
            for charge in usage:
                self.invoiced[charge.event_id] = invoice.invoice_id

    def sweeps(self, end: datetime) -> None:
        just_before = timedelta(microseconds=1)
        instants = sorted(
            {
                lot.expires_at - just_before
                for lot in self.account.lots
                if lot.expires_at - just_before <= end
            }
        )
        for now in [*instants, end]:
            sweep(self.account, now, self.policy, self.effects)

    def collect(self) -> None:
        out = self.out
        out.accounts[self.account.account_id] = self.account
        for entry in self.effects.ledger:
            if entry.entry_id in out.ledger:
                raise ScenarioError(f"ledger entry {entry.entry_id} twice in the model")
            out.ledger[entry.entry_id] = entry
        for reminder in self.effects.reminders:
            out.reminders[reminder.reminder_id] = reminder
        for charge in self.effects.postpay:
            out.postpay[charge.event_id] = (charge, self.invoiced.get(charge.event_id))
        for invoice in self.account.invoices.values():
            out.paid[invoice.invoice_id] = invoice.paid_jpy


def replay(
    records: Sequence[Record], policy: Policy, period: str, close_seq: int, end: datetime | None
) -> Expected:
    """The expected end state after every record, the month close and the sweeps up to `end`."""
    out = Expected()
    by_account: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        command = record.item.command
        if record.item.dead_code is not None or command is None:
            out.dead[record.position] = record.item.dead_code or "unknown"
        else:
            by_account[command.account_id].append(record)
    for account_id in sorted(by_account):
        mine = sorted(by_account[account_id], key=lambda r: (r.item.seq, r.offset))
        _AccountReplay(account_id, policy, period, out).run(mine, close_seq, end)
    return out


def expected_invoices(items: Sequence[Item], policy: Policy, period: str) -> dict[str, int]:
    """Totals of the invoices for `period` that closing it after `items` publishes, by account."""
    records = [Record(item, item.source, 0, n) for n, item in enumerate(items)]
    invoices = replay(records, policy, period, close_seq=len(items) + 10**9, end=None).invoices
    return {i.account_id: i.total_jpy for i in invoices.values() if i.period == period}
