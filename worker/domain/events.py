"""What applying commands yields: ledger entries, reminders, postpay usage."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from worker.domain.forecast import Forecast
from worker.domain.lots import Allocation

ReminderKind = Literal["low_balance", "balance_depleted", "credits_expiring", "credits_expired"]
LedgerKind = Literal["grant", "charge", "forfeit", "payment"]


@dataclass(frozen=True)
class LedgerEntry:
    """One signed change of an account's balance; the ledger is the sum of these."""

    entry_id: str
    account_id: str
    kind: LedgerKind
    amount_jpy: int
    balance_after_jpy: int
    occurred_at: datetime
    ref: str
    allocations: tuple[Allocation, ...] = ()


@dataclass(frozen=True)
class ReminderDue:
    """A reminder the notification service must receive exactly once (by id)."""

    reminder_id: str
    account_id: str
    kind: ReminderKind
    balance_jpy: int
    threshold_jpy: int | None
    email: str | None
    created_at: datetime
    lot_id: str | None = None
    amount_jpy: int | None = None
    expires_at: datetime | None = None
    forecast: Forecast | None = None


@dataclass(frozen=True)
class PostpayCharge:
    """Usage after the switch to postpay, kept for the month's invoice."""

    event_id: str
    account_id: str
    occurred_at: datetime
    period: str
    country: str
    unit_price_jpy: int
    segments: int
    amount_jpy: int
    from_lots_jpy: int


@dataclass
class Effects:
    """Everything applying commands produced, to be written in one transaction."""

    ledger: list[LedgerEntry] = field(default_factory=list)
    reminders: list[ReminderDue] = field(default_factory=list)
    postpay: list[PostpayCharge] = field(default_factory=list)
    usage: Counter[tuple[str, date]] = field(default_factory=Counter)
    """JPY charged per (account, business date): what the daily usage buckets grow by."""
