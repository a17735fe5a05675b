"""What the service layer needs from the outside, by Protocol only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Literal, Protocol

from worker.domain.account import Account
from worker.domain.balance import BalanceState
from worker.domain.commands import Command
from worker.domain.errors import BillingError
from worker.domain.events import Effects, PostpayCharge, ReminderDue
from worker.domain.invoicing import Invoice

Source = Literal["usage", "account"]
EventKey = tuple[Source, str]
CHARGE_PREFIX = "charge:"
"""A usage event's charge entry is `charge:<event_id>`: its de-duplication record."""


class UnrecordedUsage(BillingError):
    """An applied usage event has no charge entry, the record that de-duplicates it."""


@dataclass(frozen=True)
class InputRecord:
    """One Kafka record as read, with its position."""

    source: Source
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    """The record's Kafka timestamp: when it reached the broker (LogAppendTime) or was sent."""

    @cached_property  # read by the decoder, the aligner and the expiry bounds alike
    def arrived_at(self) -> datetime | None:
        """The Kafka timestamp as a time; None when the record carries none (negative)."""
        if self.timestamp_ms < 0:
            return None
        try:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            return None


@dataclass(frozen=True)
class Decoded:
    """A record turned into a domain command."""

    record: InputRecord
    command: Command
    fingerprint: bytes

    @property
    def key(self) -> EventKey:
        return (self.record.source, self.command.event_id)


@dataclass(frozen=True)
class Dead:
    """A record that goes to the dead-letter topic, with why."""

    record: InputRecord
    code: str
    reason: str


@dataclass(frozen=True)
class OutboxMessage:
    message_id: str
    topic: str
    key: bytes | None
    """The Kafka key exactly as it will be sent (a dead letter keeps its record's key)."""
    payload: bytes
    conflatable: bool = False
    """A snapshot (a balance): a newer one may drop it while no relay has numbered it."""
    replaces: str | None = None
    """The message id of the earlier snapshot this one makes redundant (ADR 0003)."""


@dataclass
class Changes:
    """Everything one unit of work writes."""

    accounts: list[Account] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)
    processed: list[Decoded] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)

    def usage_by_charge(self) -> dict[str, Decoded]:
        """The applied usage events by the id of their charge entry, which records them.

        Raises UnrecordedUsage when one has no charge entry: nothing would find it on replay,
        and it would be charged again; the unit of work rolls back instead."""
        usage = {
            CHARGE_PREFIX + d.command.event_id: d
            for d in self.processed
            if d.record.source == "usage"
        }
        charges = {e.entry_id for e in self.effects.ledger if e.kind == "charge"}
        missing = sorted(set(usage) - charges)
        if missing:
            raise UnrecordedUsage(f"applied usage without a charge entry: {missing[:5]}")
        return usage


class UnitOfWork(Protocol):
    created: set[str]
    """Accounts that `lock_accounts` had to create: seen for the first time."""

    async def lock_accounts(
        self, account_ids: Sequence[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, Account]:
        """Create missing accounts, lock all of them and load their state; `partitions`: the
        input partition of each account's records, stored with it."""

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        """Fingerprints of the events among `keys` that were applied before."""

    async def load_usage(self, since: Mapping[str, date]) -> dict[str, dict[date, int]]:
        """Daily charges of each account from its `since` date on (business dates)."""

    async def accounts_due_for_expiry(
        self, cutoff: datetime, lateness: timedelta, notice: timedelta, limit: int
    ) -> list[str]:
        """Accounts with a lot to forfeit or to announce by `cutoff`."""

    async def save(self, changes: Changes) -> None:
        """Write accounts, lots, ledger, processed events and outbox; a usage event is recorded
        by its charge entry (`Changes.usage_by_charge`), an account event in processed events."""


class CloseUnitOfWork(Protocol):
    async def claim_month(self, period: str) -> bool:
        """Record the close of `period`; False when it was closed before."""

    async def uninvoiced_usage(self, period: str) -> Sequence[PostpayCharge]:
        """Postpay usage of `period` and earlier that is on no invoice yet."""

    async def save_invoices(
        self,
        period: str,
        invoices: Sequence[Invoice],
        issued_at: datetime,
        outbox: Sequence[OutboxMessage],
    ) -> None:
        """Store the invoices, link their usage, queue them for publication."""


class Store(Protocol):
    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One transaction: committed on a clean exit, rolled back on an exception."""

    def close_unit_of_work(self) -> AbstractAsyncContextManager[CloseUnitOfWork]:
        """One month-close transaction; closes run one at a time."""

    async def is_closed(self, period: str) -> bool:
        """Has `period` been closed?"""

    async def mark_end_offsets(self, period: str, end_offsets: dict[str, int]) -> dict[str, int]:
        """Keep the first end offsets seen for `period` ("topic:partition" -> end); return
        the kept ones."""

    async def oldest_uninvoiced_period(self) -> str | None:
        """The oldest month with postpay usage on no invoice yet."""

    async def closed_periods(self, periods: Sequence[str]) -> set[str]:
        """Those of `periods` that are closed."""


class Encoder(Protocol):
    def reminder(self, reminder: ReminderDue) -> OutboxMessage: ...

    def dead_letter(self, dead: Dead, failed_at: datetime) -> OutboxMessage: ...

    def balance(self, state: BalanceState, previous_version: int) -> OutboxMessage: ...
