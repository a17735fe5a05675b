"""Hostile input at the domain and decoder level: far-future dates, keys, unchanged settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.unit.builders import T0, Book, at
from worker.adapters.rates import load_rate_table
from worker.adapters.wire import Decoder
from worker.domain.commands import PurchaseCredits
from worker.domain.errors import Rejected
from worker.domain.forecast import forecast
from worker.domain.lots import Lot, forfeit_passed, notice_passed
from worker.service.ports import Dead, Decoded, InputRecord

NOW = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
NOW_MS = 1_793_588_400_000  # NOW in epoch milliseconds, written out by hand


def _usage(account: str, occurred_at: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": "u-1",
            "account_id": account,
            "occurred_at": occurred_at,
            "destination": "+819012345678",
        }
    )


def _purchase(account: str, occurred_at: str) -> bytes:
    return orjson.dumps(
        {
            "type": "credits_purchased",
            "event_id": "p-1",
            "account_id": account,
            "occurred_at": occurred_at,
            "purchase_id": "p-1",
            "amount": 1000,
            "payment_method": "credit_card",
        }
    )


def _decode(
    source: str, key: bytes | None, value: bytes, timestamp_ms: int = NOW_MS
) -> Decoded | Dead:
    record = InputRecord(source, source, 0, 0, key, value, timestamp_ms)  # type: ignore[arg-type]
    return Decoder(load_rate_table(None))(record)


def _code(outcome: Decoded | Dead) -> str:
    return outcome.code if isinstance(outcome, Dead) else "applied"


def test_the_epoch_constant_is_right() -> None:
    assert datetime.fromtimestamp(NOW_MS / 1000, UTC) == NOW


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"acc-1", "applied"),
        (None, "key_mismatch"),
        (b"acc-2", "key_mismatch"),
        (b"", "key_mismatch"),
        (b"acc-1\x00", "key_mismatch"),
        (b"acc-1 ", "key_mismatch"),
        (b"\xffacc-1", "key_mismatch"),
    ],
)
def test_a_record_keyed_by_anything_but_its_account_is_a_key_mismatch(
    key: bytes | None, expected: str
) -> None:
    assert _code(_decode("usage", key, _usage("acc-1", "2026-11-02T11:00:00+09:00"))) == expected
    assert _code(_decode("account", key, _purchase("acc-1", "2026-11-02T02:00:00Z"))) == expected


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("9999-10-02T23:30:00Z", "implausible_time"),
        ("1999-12-31T23:59:59Z", "implausible_time"),
        ("2000-01-01T09:00:00+09:00", "applied"),  # 2000-01-01T00:00Z exactly
        ("2000-01-01T08:59:59+09:00", "implausible_time"),
        ("2026-11-03T03:00:00Z", "applied"),  # the record timestamp + 1 day exactly
        ("2026-11-03T03:00:00.001Z", "implausible_time"),
        ("0001-01-01T00:00:00Z", "implausible_time"),
    ],
)
def test_occurred_at_before_2000_or_beyond_the_clock_skew_is_implausible(
    occurred_at: str, expected: str
) -> None:
    assert _code(_decode("account", b"acc-1", _purchase("acc-1", occurred_at))) == expected
    assert _code(_decode("usage", b"acc-1", _usage("acc-1", occurred_at))) == expected


def test_a_far_future_record_timestamp_does_not_admit_a_year_9999_event() -> None:
    year_9999_ms = 253_370_764_800_000  # 9999-01-01T00:00Z
    got = _decode("account", b"acc-1", _purchase("acc-1", "9999-10-02T23:30:00Z"), year_9999_ms)

    assert _code(got) == "implausible_time"


def test_a_lot_that_would_expire_past_the_representable_range_is_refused() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    late = datetime(9999, 12, 1, tzinfo=UTC)

    with pytest.raises(Rejected) as refused:
        book.apply(PurchaseCredits("p-9", "acc-1", late, "p-9", 1000, "credit_card"))

    assert refused.value.code == "implausible_time"
    assert book.account.lots == []


def test_expiry_checks_of_a_lot_at_the_end_of_time_do_not_overflow() -> None:
    end = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    lot = Lot("lot:x", 1000, end - timedelta(days=90), end, "purchase")
    last = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)

    assert not forfeit_passed(lot, NOW, timedelta(hours=1), inclusive=True)
    assert not notice_passed(lot, NOW, timedelta(days=7), inclusive=True)
    assert not forfeit_passed(lot, last, timedelta(hours=1), inclusive=True)


def test_the_sweep_forfeits_a_due_lot_beside_a_lot_expiring_at_the_end_of_time() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.purchase(1000, T0)
    end = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    book.account.lots.append(Lot("lot:far", 1000, end - timedelta(days=90), end, "purchase"))

    book.sweep(at(91))

    assert [r.kind for r in book.reminders("credits_expired")] == ["credits_expired"]
    assert book.account.balance_jpy == 1000


def test_an_unchanged_reminder_setting_at_or_below_the_threshold_sends_nothing() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.purchase(1000, T0)
    book.configure(at(1), 2000)
    assert [r.kind for r in book.take_reminders()] == ["low_balance"]

    book.configure(at(2), 2000)
    book.configure(at(3), 2000)

    assert book.take_reminders() == []


def test_a_changed_email_is_a_changed_setting() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.purchase(1000, T0)
    book.configure(at(1), 2000)
    book.take_reminders()

    book.configure(at(2), 2000, email="new@example.com")

    assert [(r.kind, r.email) for r in book.take_reminders()] == [
        ("low_balance", "new@example.com")
    ]


def test_the_forecast_of_a_lot_expiring_at_the_end_of_time_does_not_overflow() -> None:
    end = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    lot = Lot("lot:far", 5000, end - timedelta(days=90), end, "purchase")
    tokyo = ZoneInfo("Asia/Tokyo")

    got = forecast({NOW.astimezone(tokyo).date(): 70}, [lot], 5000, NOW, tokyo)

    # 70 JPY in the 7-day window is JPY 10 a day: 500 days to spend 5000, long before the end.
    assert (got.usage_jpy_per_day, got.expiring_unused_jpy) == (10, 0)
    assert got.runs_out_on == (NOW + timedelta(days=500)).astimezone(tokyo).date()


def test_the_forecast_of_a_lot_left_unspent_at_the_end_of_time_does_not_overflow() -> None:
    end = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    lot = Lot("lot:far", 10_000_000, end - timedelta(days=90), end, "purchase")
    tokyo = ZoneInfo("Asia/Tokyo")

    # JPY 1 a day cannot spend 10 million before the lot expires: it runs out at the expiry,
    # whose Tokyo date would be in year 10000; the UTC date stands in for it.
    got = forecast({NOW.astimezone(tokyo).date(): 7}, [lot], 10_000_000, NOW, tokyo)

    assert got.usage_jpy_per_day == 1
    assert got.runs_out_on == end.date()
