"""Field types and base models shared by every topic's schema."""

import re
from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict

# RFC 3339 `date-time` (seconds required, offset required); pydantic alone would also accept
# unix numbers, numeric strings and offsets without a colon.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

COUNTRY_PATTERN = r"^[A-Z]{2}$"
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


def _rfc3339_only(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError("must be an RFC 3339 timestamp with offset, e.g. 2024-07-09T12:00:00+09:00")


def _iso_date_only(value: object) -> object:
    if isinstance(value, datetime):
        raise ValueError("must be a date, not a datetime")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a calendar date YYYY-MM-DD")


def _as_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise ValueError("timestamp is out of range once converted to UTC") from exc


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only), AfterValidator(_as_utc)]
"""A timezone-aware instant: RFC 3339 with offset on the wire, normalised to UTC."""

CalendarDate = Annotated[date, BeforeValidator(_iso_date_only)]
"""A calendar date, `YYYY-MM-DD` on the wire."""


class InputModel(BaseModel):
    """Base of the messages the worker consumes: unknown fields ignored, immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class OutputModel(BaseModel):
    """Base of the messages the worker publishes: unknown fields rejected, immutable."""

    # Every field is always emitted, so the published schema lists them all as required.
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )

    def to_json_bytes(self) -> bytes:
        """The UTF-8 JSON record value to publish (timestamps in UTC, `Z` suffix)."""
        return self.model_dump_json().encode("utf-8")
