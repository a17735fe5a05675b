"""Commands the account side and the telephony platform send, and what applying them yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from worker.domain.lots import Allocation
from worker.domain.rating import Rated

ReminderKind = Literal["low_balance", "balance_depleted", "credits_expiring", "credits_expired"]
LedgerKind = Literal["grant", "charge", "forfeit", "payment"]


@dataclass(frozen=True)
class OpenAccount:
    event_id: str
    account_id: str
    occurred_at: datetime
    test_credits_jpy: int | None


@dataclass(frozen=True)
class PurchaseCredits:
    event_id: str
    account_id: str
    occurred_at: datetime
    purchase_id: str
    amount_jpy: int
    payment_method: str


@dataclass(frozen=True)
class ConfigureReminder:
    event_id: str
    account_id: str
    occurred_at: datetime
    enabled: bool
    threshold_jpy: int
    email: str | None


@dataclass(frozen=True)
class SwitchToPostpay:
    event_id: str
    account_id: str
    occurred_at: datetime
    contract_id: str


@dataclass(frozen=True)
class PayInvoice:
    event_id: str
    account_id: str
    occurred_at: datetime
    invoice_id: str
    amount_jpy: int


@dataclass(frozen=True)
class ChargeUsage:
    event_id: str
    account_id: str
    occurred_at: datetime
    rated: Rated
    # When the record reached Kafka: lots pay only for what arrived within the lateness. A fact
    # of delivery, not of the event, so it is no part of the command's identity.
    arrived_at: datetime | None = field(default=None, compare=False)


Command = (
    OpenAccount | PurchaseCredits | ConfigureReminder | SwitchToPostpay | PayInvoice | ChargeUsage
)


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
