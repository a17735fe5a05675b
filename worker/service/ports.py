"""What the service layer needs from the outside, by Protocol only."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from worker.domain.account import Account
from worker.domain.events import Command, Effects, ReminderDue

Source = Literal["usage", "account"]
EventKey = tuple[Source, str]


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


@dataclass
class Changes:
    """Everything one unit of work writes."""

    accounts: list[Account] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)
    processed: list[Decoded] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)


class UnitOfWork(Protocol):
    created: set[str]
    """Accounts that `lock_accounts` had to create: seen for the first time."""

    async def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        """Create missing accounts, lock all of them and load their state."""

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        """Fingerprints of the events among `keys` that were applied before."""

    async def accounts_due_for_expiry(
        self, now: datetime, lateness: timedelta, notice: timedelta, limit: int
    ) -> list[str]:
        """Accounts with a lot to forfeit or to announce."""

    async def save(self, changes: Changes) -> None:
        """Write accounts, lots, ledger, processed events and outbox."""


class Store(Protocol):
    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One transaction: committed on a clean exit, rolled back on an exception."""


class Encoder(Protocol):
    def reminder(self, reminder: ReminderDue) -> OutboxMessage: ...

    def dead_letter(self, dead: Dead, failed_at: datetime) -> OutboxMessage: ...
