"""`billing.account-events.v1`: account and payment events, discriminated by `type`."""

from typing import Annotated, Literal, Self

from pydantic import Field, TypeAdapter, model_validator

from schemas._types import InputModel, Timestamp


class AccountEventBase(InputModel):
    """Fields every account event carries."""

    event_id: str = Field(
        min_length=1, max_length=128, description="Unique per event; a replay is skipped."
    )
    account_id: str = Field(
        min_length=1, max_length=64, description="Account concerned; also the Kafka message key."
    )
    occurred_at: Timestamp = Field(description="When it happened (RFC 3339 with offset).")


class AccountOpened(AccountEventBase):
    """A new (prepay) account, granted free test credits."""

    type: Literal["account_opened"] = Field(description="Event type.")
    test_credits: int | None = Field(
        None,
        strict=True,
        ge=0,
        description="Test credits in JPY, overriding the configured default when present.",
    )


class CreditsPurchased(AccountEventBase):
    """Prepaid credits bought: granted as a lot that expires after 90 days."""

    type: Literal["credits_purchased"] = Field(description="Event type.")
    purchase_id: str = Field(min_length=1, max_length=128, description="The purchase's id.")
    amount: int = Field(
        strict=True,
        gt=0,
        description=(
            "Credits bought, in JPY: a multiple of 1,000; over 100,000 when paid by invoice."
        ),
    )
    payment_method: Literal["credit_card", "invoice"] = Field(
        description="How the purchase was paid."
    )


class ReminderConfigured(AccountEventBase):
    """The account's top-up reminder was enabled, changed or disabled."""

    type: Literal["reminder_configured"] = Field(description="Event type.")
    enabled: bool = Field(strict=True, description="Whether low-balance reminders are sent.")
    threshold: int = Field(
        strict=True, ge=0, description="Remind when the balance falls to this many JPY or below."
    )
    email: str | None = Field(
        None,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        description="Where the reminder is e-mailed; required when enabled is true.",
    )

    @model_validator(mode="after")
    def _email_when_enabled(self) -> Self:
        if self.enabled and self.email is None:
            raise ValueError("email is required when enabled is true")
        return self


class SwitchedToPostpay(AccountEventBase):
    """The account moved to a postpay contract: billed by monthly invoice from now on."""

    type: Literal["switched_to_postpay"] = Field(description="Event type.")
    contract_id: str = Field(min_length=1, max_length=128, description="The postpay contract.")


class InvoicePaid(AccountEventBase):
    """A (possibly partial) bank payment received for a postpay invoice."""

    type: Literal["invoice_paid"] = Field(description="Event type.")
    invoice_id: str = Field(min_length=1, max_length=128, description="The invoice paid.")
    amount: int = Field(strict=True, gt=0, description="Amount received, in JPY.")


AccountEvent = Annotated[
    AccountOpened | CreditsPurchased | ReminderConfigured | SwitchedToPostpay | InvoicePaid,
    Field(discriminator="type"),
]
"""Any account event; `type` selects the model."""

ACCOUNT_EVENT_ADAPTER: TypeAdapter[AccountEvent] = TypeAdapter(AccountEvent)
