"""Commands the account side and the telephony platform send."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from worker.domain.rating import Rated


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
