"""`sms.usage.v1`: one SMS sent by the telephony platform, to be charged."""

from pydantic import Field

from schemas._types import COUNTRY_PATTERN, InputModel, Timestamp


class UsageEvent(InputModel):
    """One SMS sent through the API: charged per segment at the destination's rate."""

    event_id: str = Field(
        min_length=1, max_length=128, description="Unique per charge; a replay is skipped."
    )
    account_id: str = Field(
        min_length=1, max_length=64, description="Account charged; also the Kafka message key."
    )
    occurred_at: Timestamp = Field(
        description="When the SMS was sent (RFC 3339 with offset); lots are debited by this time."
    )
    destination: str = Field(
        pattern=r"^\+[1-9][0-9]{1,14}$",
        description="Destination number in E.164 form, e.g. +819012345678.",
    )
    country: str | None = Field(
        None,
        pattern=COUNTRY_PATTERN,
        description="ISO 3166-1 alpha-2 country of the destination; derived from it when absent.",
    )
    segments: int = Field(
        1, strict=True, ge=1, le=255, description="Number of SMS segments billed (default 1)."
    )
    message_id: str | None = Field(
        None, max_length=128, description="The platform's message id, for reference only."
    )
