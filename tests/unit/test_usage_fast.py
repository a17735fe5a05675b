"""The plain-shape reader of usage payloads accepts nothing UsageEvent refuses, and gives
what the model gives (values and fingerprint) for everything it accepts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import UsageEvent
from worker.adapters.usage_fast import Usage, read_usage

# Values near every edge the model draws: lengths, patterns, types, time formats.
_TEXT = st.one_of(
    st.text(max_size=3),
    st.text(min_size=60, max_size=70),
    st.text(min_size=125, max_size=130),
    st.sampled_from(["e-1", "acct-1", "", "x" * 64, "x" * 65, "x" * 128, "x" * 129]),
)
_DESTINATION = st.one_of(
    st.from_regex(r"\+[0-9]{1,16}", fullmatch=True),
    st.sampled_from(["+819012345678", "+1", "+0123", "819012345678", "+81 90", "+8190\n"]),
    st.text(max_size=5),
)
_COUNTRY = st.one_of(
    st.none(),
    st.sampled_from(["JP", "US", "jp", "J", "JPN", "J1", "ÄB", "JP\n"]),
    st.text(max_size=3),
)
_SEGMENTS = st.one_of(
    st.integers(min_value=-2, max_value=300),
    st.sampled_from([True, False, 1.0, 2.5, "1", None]),
)
_TIMES = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001 - made aware by `timezones`
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.sampled_from([UTC]),
    ).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: refused by the model
    st.sampled_from(
        [
            "2026-12-01T02:00:00Z",
            "2026-12-01T02:00:00.5Z",
            "2026-12-01T02:00:00.123456789Z",
            "2026-12-01T02:00:00+09:00",
            "2026-12-01t02:00:00z",
            "2026-12-01 02:00:00Z",
            "2026-02-30T02:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T23:59:60Z",
            "2026-12-01T02:00:00+24:00",
            "2026-12-01T02:00:00-23:59",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-12-01T02:00:00+0900",
            "2026-12-01",
            "1733018400",
        ]
    ),
    st.integers(),
)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    fields = {
        "event_id": _TEXT,
        "account_id": _TEXT,
        "occurred_at": _TIMES,
        "destination": _DESTINATION,
        "country": _COUNTRY,
        "segments": _SEGMENTS,
        "message_id": st.one_of(st.none(), _TEXT, st.integers()),
        "extra": st.one_of(st.none(), st.integers(), st.text(max_size=3)),
    }
    present = draw(st.sets(st.sampled_from(sorted(fields))))
    return {name: draw(fields[name]) for name in sorted(present)}


def _model_fingerprint(model: UsageEvent) -> bytes:
    # The fingerprint as the decoder computed it before the plain-shape reader existed.
    canonical = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


def _as_model_gives(payload: dict[str, Any]) -> Usage | None:
    try:
        m = UsageEvent.model_validate(payload)
    except ValidationError:
        return None
    return Usage(
        m.event_id, m.account_id, m.occurred_at, m.destination, m.country, m.segments, m.message_id
    )


@settings(max_examples=1000, deadline=None)
@given(payloads())
def test_accepts_only_what_the_model_accepts_and_gives_the_same(payload: dict[str, Any]) -> None:
    fast = read_usage(payload)
    if fast is None:
        return
    model = _as_model_gives(payload)
    assert model is not None, payload
    assert fast == model
    assert fast.occurred_at.tzinfo is UTC
    assert fast.fingerprint() == _model_fingerprint(UsageEvent.model_validate(payload))


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - made aware by `timezones`
        max_value=datetime(8999, 12, 31),  # noqa: DTZ001
        timezones=st.sampled_from([UTC]),
    ),
    st.sampled_from(["Z", "+00:00", "+09:00", "-05:30"]),
    st.integers(min_value=0, max_value=6),
)
def test_every_plain_time_is_read_as_the_model_reads_it(
    at: datetime, offset: str, digits: int
) -> None:
    text = at.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{at.microsecond:06d}"[: digits + 1] if digits else ""
    )
    payload = {
        "event_id": "e-1",
        "account_id": "acct-1",
        "occurred_at": text + offset,
        "destination": "+819012345678",
    }
    fast = read_usage(payload)
    assert fast is not None
    assert fast == _as_model_gives(payload)
    assert fast.fingerprint() == _model_fingerprint(UsageEvent.model_validate(payload))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"segments": True}, "a bool is not a segment count"),
        ({"segments": 1.0}, "strict integer"),
        ({"segments": 0}, "at least one segment"),
        ({"country": "jp"}, "upper-case ISO code"),
        ({"destination": "+8190\n"}, "no trailing newline"),
        ({"occurred_at": "2026-12-01T02:00:00"}, "offset required"),
        ({"occurred_at": "2026-12-01t02:00:00z"}, "left to the model: lower-case"),
        ({"occurred_at": "2026-12-01T02:00:00.1234567Z"}, "left to the model: 7 digits"),
        ({"event_id": ""}, "empty id"),
        ({"account_id": "a" * 65}, "account id too long"),
    ],
)
def test_left_to_the_model(change: dict[str, Any], why: str) -> None:
    payload = {
        "event_id": "e-1",
        "account_id": "acct-1",
        "occurred_at": "2026-12-01T02:00:00Z",
        "destination": "+819012345678",
        "country": "JP",
        "segments": 2,
        **change,
    }
    assert read_usage(payload) is None, why


def test_the_plain_shape_with_defaults() -> None:
    got = read_usage(
        {
            "event_id": "e-1",
            "account_id": "acct-1",
            "occurred_at": "2026-12-01T11:00:00.25+09:00",
            "destination": "+819012345678",
            "unknown": [1, 2],
        }
    )
    assert got == Usage(
        "e-1",
        "acct-1",
        datetime(2026, 12, 1, 2, 0, 0, 250_000, tzinfo=UTC),
        "+819012345678",
        None,
        1,
        None,
    )
