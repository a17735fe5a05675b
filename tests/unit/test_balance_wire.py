"""The balance snapshot's fast encoding is byte for byte the published pydantic contract's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from schemas import Balance
from worker.adapters.wire import balance_json, wire_balance
from worker.domain.balance import BalanceState, NextExpiry

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5, minutes=-30))]
)
_TIMES = st.builds(
    lambda micros, zone: (
        datetime(2000, 1, 2, tzinfo=UTC) + timedelta(microseconds=micros)
    ).astimezone(zone),
    st.integers(min_value=0, max_value=100 * 365 * 86_400 * 10**6),
    _ZONES,
)
_JPY = st.integers(min_value=0, max_value=10**12)
_STATES = st.builds(
    BalanceState,
    account_id=st.text(min_size=1, max_size=64),
    plan=st.sampled_from(["prepay", "postpay"]),
    balance_jpy=st.integers(min_value=-(10**12), max_value=10**12),
    overdraft_jpy=_JPY,
    postpay_due_jpy=_JPY,
    credit_jpy=_JPY,
    next_expiry=st.none()
    | st.builds(NextExpiry, _TIMES, st.integers(min_value=1, max_value=10**12)),
    status=st.sampled_from(["ok", "low", "depleted", "postpay"]),
    version=st.integers(min_value=0, max_value=2**62),
    as_of=st.none() | _TIMES,
)


@given(_STATES)
def test_fast_bytes_equal_the_contract_models(state: BalanceState) -> None:
    assert balance_json(state) == wire_balance(state).to_json_bytes()


def test_an_offset_time_goes_out_in_utc_with_z() -> None:
    tokyo = timezone(timedelta(hours=9))
    state = BalanceState(
        "acc-1",
        "prepay",
        900,
        0,
        0,
        900,
        NextExpiry(datetime(2027, 3, 1, 9, 0, 0, 250_000, tzinfo=tokyo), 900),
        "ok",
        3,
        datetime(2026, 12, 1, 9, tzinfo=tokyo),
    )
    encoded = balance_json(state)
    assert b'"expires_at":"2027-03-01T00:00:00.250000Z"' in encoded
    assert b'"as_of":"2026-12-01T00:00:00Z"' in encoded
    assert Balance.model_validate_json(encoded).version == 3
