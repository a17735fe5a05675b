"""An in-memory Store for service tests: accounts, applied events and outbox, no I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker.domain.account import Account
from worker.domain.events import LedgerEntry
from worker.service.ports import Changes, EventKey, OutboxMessage


@dataclass
class FakeStore:
    """Commits every unit of work (nothing here fails); keeps what was saved, in order."""

    accounts: dict[str, Account] = field(default_factory=dict)
    applied: dict[EventKey, bytes] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    created: set[str] = field(default_factory=set)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[FakeStore]:
        self.created = set()
        yield self

    async def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        for account_id in account_ids:
            if account_id not in self.accounts:
                self.accounts[account_id] = Account(account_id)
                self.created.add(account_id)
        return {a: self.accounts[a] for a in account_ids}

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        return {k: self.applied[k] for k in keys if k in self.applied}

    async def accounts_due_for_expiry(
        self, cutoff: datetime, lateness: timedelta, notice: timedelta, limit: int
    ) -> list[str]:
        due = [
            a.account_id
            for a in self.accounts.values()
            if any(
                not lot.forfeited
                and lot.remaining_jpy > 0
                and (
                    lot.expires_at <= cutoff - lateness
                    or (not lot.expiring_notified and lot.expires_at - notice <= cutoff)
                )
                for lot in a.lots
            )
        ]
        return sorted(due)[:limit]

    async def save(self, changes: Changes) -> None:
        for item in changes.processed:
            self.applied[item.key] = item.fingerprint
        self.ledger.extend(changes.effects.ledger)
        self.outbox.extend(changes.outbox)
