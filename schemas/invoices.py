"""`billing.invoices.v1`: month-end invoices for postpay accounts."""

from typing import Literal, Self

from pydantic import Field, model_validator

from schemas._types import (
    COUNTRY_PATTERN,
    PERIOD_PATTERN,
    CalendarDate,
    OutputModel,
    Timestamp,
)


class InvoiceLine(OutputModel):
    """One invoice line: usage per country, unit price and month, or prepaid credit applied."""

    description: str = Field(min_length=1, max_length=256, description="Human-readable label.")
    country: str | None = Field(
        None,
        pattern=COUNTRY_PATTERN,
        description="ISO 3166-1 alpha-2 destination country; null on the prepaid-credit line.",
    )
    unit_price: int = Field(
        strict=True, description="Price per unit in JPY (negative on the prepaid-credit line)."
    )
    quantity: int = Field(strict=True, ge=1, description="Units: SMS segments, or 1.")
    amount: int = Field(strict=True, description="unit_price × quantity, in JPY.")
    period: str = Field(
        pattern=PERIOD_PATTERN,
        description="Month (YYYY-MM) the usage happened in; earlier than the invoice's when late.",
    )

    @model_validator(mode="after")
    def _amount_is_price_times_quantity(self) -> Self:
        if self.amount != self.unit_price * self.quantity:
            raise ValueError("amount must equal unit_price * quantity")
        return self


class Invoice(OutputModel):
    """A postpay account's invoice for one month, payable by bank deposit."""

    invoice_id: str = Field(
        min_length=1,
        max_length=128,
        description="Deterministic per account and period, for de-duplication.",
    )
    account_id: str = Field(
        min_length=1, max_length=64, description="Account invoiced; also the Kafka message key."
    )
    period: str = Field(pattern=PERIOD_PATTERN, description="Month invoiced, YYYY-MM.")
    period_start: Timestamp = Field(
        description="Start of the month in the business time zone (inclusive), as UTC."
    )
    period_end: Timestamp = Field(
        description="End of the month in the business time zone (exclusive), as UTC."
    )
    issued_at: Timestamp = Field(description="When the invoice was issued (UTC).")
    due_date: CalendarDate = Field(description="Last day of the following month.")
    currency: Literal["JPY"] = Field("JPY", description="Always JPY (no minor unit).")
    payment_method: Literal["bank_deposit"] = Field(
        "bank_deposit", description="Always bank deposit."
    )
    lines: list[InvoiceLine] = Field(min_length=1, description="Usage lines, then credit applied.")
    total: int = Field(strict=True, description="Amount due in JPY: the sum of the lines.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be after period_start")
        if self.total != sum(line.amount for line in self.lines):
            raise ValueError("total must equal the sum of the line amounts")
        return self
