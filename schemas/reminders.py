"""`billing.reminders.v1`: reminders for the notification service to e-mail."""

from typing import Literal, Self

from pydantic import Field, model_validator

from schemas._types import CalendarDate, OutputModel, Timestamp

ReminderKind = Literal["low_balance", "balance_depleted", "credits_expiring", "credits_expired"]
LOT_KINDS: frozenset[str] = frozenset({"credits_expiring", "credits_expired"})
FORECAST_KINDS: frozenset[str] = frozenset({"low_balance", "balance_depleted", "credits_expiring"})


class Forecast(OutputModel):
    """The account's recent spending and what it means, as of the reminder's event time."""

    usage_jpy_per_day: int = Field(
        strict=True,
        ge=0,
        description=(
            "Charges with occurred_at on the business date of the reminder and the 6 before "
            "(Asia/Tokyo by default), divided by 7, rounded half up."
        ),
    )
    runs_out_on: CalendarDate | None = Field(
        description=(
            "Business date on which the balance reaches 0 at that rate (spending and expiries "
            "together); null when the rate is 0 or the balance is already <= 0."
        )
    )
    expiring_unused_jpy: int = Field(
        strict=True,
        ge=0,
        description=(
            "Credit that, spent at that rate soonest expiry first, would still be in its lot "
            "when the lot expires."
        ),
    )
    suggested_package_jpy: int = Field(
        strict=True,
        ge=1000,
        multiple_of=1000,
        description=(
            "The largest multiple of JPY 1,000 (at least 1,000) the rate uses up within a "
            "lot's validity (90 days)."
        ),
    )


class Reminder(OutputModel):
    """A top-up or expiry reminder about one account."""

    # Ids are built from input ids (account_id <= 64, event_id <= 128):
    # `account:kind:cause`, the cause being a ledger entry or lot id (<= 140), fits in 256.
    reminder_id: str = Field(
        min_length=1,
        max_length=256,
        description="Deterministic: the same reminder always has the same id, for de-duplication.",
    )
    account_id: str = Field(
        min_length=1, max_length=64, description="Account concerned; also the Kafka message key."
    )
    kind: ReminderKind = Field(description="What the reminder is about.")
    balance: int = Field(
        strict=True, description="Account balance in JPY when it was raised (may be negative)."
    )
    threshold: int | None = Field(
        None,
        strict=True,
        ge=0,
        description="The reminder threshold in JPY, when one is configured.",
    )
    email: str | None = Field(
        None,
        max_length=254,
        description="Configured reminder address; null when none is configured.",
    )
    created_at: Timestamp = Field(description="When the reminder was raised (UTC).")
    lot_id: str | None = Field(
        None, min_length=1, max_length=256, description="The credit lot, for lot kinds only."
    )
    amount: int | None = Field(
        None,
        strict=True,
        ge=0,
        description="Credit expiring or forfeited in JPY, for lot kinds only.",
    )
    expires_at: Timestamp | None = Field(
        None, description="When the lot expires or expired, for lot kinds only."
    )
    forecast: Forecast | None = Field(
        None,
        description="For low_balance, balance_depleted and credits_expiring; null otherwise.",
    )

    @model_validator(mode="after")
    def _lot_fields_match_kind(self) -> Self:
        lot_fields = (self.lot_id, self.amount, self.expires_at)
        if self.kind in LOT_KINDS and None in lot_fields:
            raise ValueError(f"{self.kind} needs lot_id, amount and expires_at")
        if self.kind not in LOT_KINDS and lot_fields != (None, None, None):
            raise ValueError(f"{self.kind} takes no lot_id, amount or expires_at")
        if self.kind in FORECAST_KINDS and self.forecast is None:
            raise ValueError(f"{self.kind} needs a forecast")
        if self.kind not in FORECAST_KINDS and self.forecast is not None:
            raise ValueError(f"{self.kind} takes no forecast")
        if self.kind == "low_balance" and (self.threshold is None or self.email is None):
            raise ValueError("low_balance needs threshold and email")
        return self
