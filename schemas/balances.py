"""`billing.balances.v1`: each account's current balance, compacted by `account_id`."""

from typing import Literal

from pydantic import Field

from schemas._types import OutputModel, Timestamp

BalanceStatus = Literal["ok", "low", "depleted", "postpay"]


class NextExpiry(OutputModel):
    """The soonest lot that still holds credit."""

    expires_at: Timestamp = Field(description="When that lot expires (UTC).")
    amount: int = Field(strict=True, gt=0, description="Credit left in that lot, JPY.")


class Balance(OutputModel):
    """One account's state after a batch that changed it; the newest `version` wins."""

    account_id: str = Field(
        min_length=1, max_length=64, description="The account; also the Kafka message key."
    )
    plan: Literal["prepay", "postpay"] = Field(description="The account's plan.")
    balance: int = Field(
        strict=True,
        description="Credit minus overdraft minus postpay usage not yet paid, JPY (may be < 0).",
    )
    overdraft: int = Field(
        strict=True, ge=0, description="Prepay usage the lots could not cover, JPY."
    )
    postpay_due: int = Field(
        strict=True, ge=0, description="Postpay usage not yet paid, JPY (invoiced or not)."
    )
    credit: int = Field(
        strict=True,
        ge=0,
        description="Credit left in lots not yet forfeited (they can still pay), JPY.",
    )
    next_expiry: NextExpiry | None = Field(
        description="The soonest lot with credit left; null when no lot holds credit."
    )
    status: BalanceStatus = Field(
        description=(
            "postpay: a postpay account; depleted: prepay with balance <= 0; low: prepay, "
            "reminder enabled and balance <= its threshold; ok: otherwise."
        )
    )
    version: int = Field(
        strict=True,
        ge=0,
        description=(
            "Strictly increasing per account (one per change applied; versions may skip: a "
            "snapshot superseded before it was published is never sent): drop a message "
            "whose version is not above the last one kept."
        ),
    )
    as_of: Timestamp | None = Field(
        description="Event time (`occurred_at`) of the last change counted in `version`."
    )
