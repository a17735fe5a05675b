"""The common usage payload read without building a model: what `UsageEvent` would accept.

`UsageEvent` stays the contract. This reads only payloads of its plainest shape (the shape the
platform sends) and answers None for anything else, which then goes through `UsageEvent`
itself, with its error messages: so it may refuse more than the model, never accept more, and
what it accepts comes out with the values the model would give (tests/unit/test_usage_fast.py
compares the two on generated payloads). It saves the model's Python validators (RFC 3339
check, conversion to UTC) and the dump behind the fingerprint, about half of decoding.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# A subset of schemas._types' RFC 3339 pattern: upper-case `T` and `Z`, at most 6 digits of a
# second (Python and pydantic read those the same way); anything else goes to the model.
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
# As UsageEvent's `destination` and `country` patterns (whole-string matches).
_DESTINATION = re.compile(r"\+[1-9][0-9]{1,14}")
_COUNTRY = re.compile(r"[A-Z]{2}")


class Usage(NamedTuple):
    """The fields of a usage event as `UsageEvent` validates them (`occurred_at` in UTC)."""

    event_id: str
    account_id: str
    occurred_at: datetime
    destination: str
    country: str | None
    segments: int
    message_id: str | None

    def fingerprint(self) -> bytes:
        """Equal to the fingerprint of the validated model: SHA-256 of its JSON dump with
        sorted keys (timestamps as pydantic writes them: microseconds only when not zero, `Z`)."""
        canonical = orjson.dumps(
            {
                "account_id": self.account_id,
                "country": self.country,
                "destination": self.destination,
                "event_id": self.event_id,
                "message_id": self.message_id,
                "occurred_at": self.occurred_at,
                "segments": self.segments,
            },
            option=orjson.OPT_UTC_Z,
        )
        return hashlib.sha256(canonical).digest()


def _text(value: object, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


def _time(value: object) -> datetime | None:
    if type(value) is not str or _TIME.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None  # e.g. a 30th of February or an offset of 24 h: the model words the error


def read_usage(payload: dict[str, Any]) -> Usage | None:
    """The usage event in `payload` (a parsed JSON object) if it has the plain shape."""
    event_id = payload.get("event_id")
    account_id = payload.get("account_id")
    destination = payload.get("destination")
    country = payload.get("country")
    segments = payload.get("segments", 1)
    message_id = payload.get("message_id")
    if not (_text(event_id, 1, 128) and _text(account_id, 1, 64)):
        return None
    if type(destination) is not str or _DESTINATION.fullmatch(destination) is None:
        return None
    if country is not None and (type(country) is not str or _COUNTRY.fullmatch(country) is None):
        return None
    # `type(...) is int`: strict, so neither a bool nor a float such as 1.0.
    if type(segments) is not int or not 1 <= segments <= 255:
        return None
    if message_id is not None and not _text(message_id, 0, 128):
        return None
    occurred_at = _time(payload.get("occurred_at"))
    if occurred_at is None:
        return None
    return Usage(event_id, account_id, occurred_at, destination, country, segments, message_id)  # type: ignore[arg-type]
