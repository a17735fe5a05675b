"""The usage forecast, with expected values worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.domain.forecast import forecast, suggested_package, usage_rate
from worker.domain.lots import Lot

TOKYO = ZoneInfo("Asia/Tokyo")
AT = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # 2026-11-30 12:00 in Tokyo


def lot(lot_id: str, remaining: int, expires_in: timedelta, amount: int = 1_000) -> Lot:
    expires_at = AT + expires_in
    return Lot(
        lot_id=lot_id,
        amount_jpy=amount,
        granted_at=expires_at - timedelta(days=90),
        expires_at=expires_at,
        source="purchase",
        remaining_jpy=remaining,
    )


def test_rate_averages_the_day_of_the_event_and_the_six_before() -> None:
    usage = {date(2026, 11, 30): 70, date(2026, 11, 24): 70, date(2026, 11, 23): 700}
    assert usage_rate(usage, AT, TOKYO) == 20  # (70 + 70) / 7; the 23rd is outside


@pytest.mark.parametrize(("total", "rate"), [(0, 0), (3, 0), (4, 1), (24, 3), (25, 4), (700, 100)])
def test_rate_rounds_half_up(total: int, rate: int) -> None:
    assert usage_rate({date(2026, 11, 28): total}, AT, TOKYO) == rate


def test_window_follows_the_business_date_not_utc() -> None:
    at = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # 2026-12-01 01:00 in Tokyo
    usage = {date(2026, 11, 24): 700, date(2026, 12, 1): 70}
    assert usage_rate(usage, at, TOKYO) == 10


def test_no_usage_means_no_run_out_date_and_all_credit_expires_unused() -> None:
    got = forecast(
        {},
        [lot("a", 1_000, timedelta(days=80)), lot("b", 100, timedelta(days=5))],
        1_100,
        AT,
        TOKYO,
    )
    assert got.usage_jpy_per_day == 0
    assert got.runs_out_on is None
    assert got.expiring_unused_jpy == 1_100
    assert got.suggested_package_jpy == 1_000


def test_one_lot_runs_out_at_the_rate() -> None:
    got = forecast(
        {date(2026, 11, 29): 700}, [lot("a", 1_000, timedelta(days=80))], 1_000, AT, TOKYO
    )
    assert got.usage_jpy_per_day == 100
    assert got.runs_out_on == date(2026, 12, 10)  # 1,000 / 100 = 10 days after the 30th
    assert got.expiring_unused_jpy == 0
    assert got.suggested_package_jpy == 9_000  # 100 a day for 90 days


def test_several_lots_expiring_on_different_days() -> None:
    lots = [
        lot("c", 1_000, timedelta(days=25)),
        lot("a", 500, timedelta(days=3)),
        lot("b", 1_000, timedelta(days=20)),
    ]
    got = forecast({date(2026, 11, 29): 700}, lots, 2_500, AT, TOKYO)
    # a: 3 days x 100 = 300 spent, 200 left when it expires on 12-03.
    # b: from 12-03 spends 1,000 in 10 days (until 12-13); c: 1,000 more in 10 days.
    assert got.expiring_unused_jpy == 200
    assert got.runs_out_on == date(2026, 12, 23)


def test_balance_that_runs_out_by_forfeit_runs_out_on_the_expiry_date() -> None:
    got = forecast({date(2026, 11, 30): 70}, [lot("a", 1_000, timedelta(days=5))], 1_000, AT, TOKYO)
    assert got.usage_jpy_per_day == 10
    assert got.expiring_unused_jpy == 950
    assert got.runs_out_on == date(2026, 12, 5)


def test_balance_already_negative_has_no_run_out_date() -> None:
    got = forecast({date(2026, 11, 30): 210}, [], -50, AT, TOKYO)
    assert got.usage_jpy_per_day == 30
    assert got.runs_out_on is None
    assert got.expiring_unused_jpy == 0
    assert got.suggested_package_jpy == 2_000  # 30 x 90 = 2,700, down to a whole package


def test_forfeited_lots_are_ignored() -> None:
    gone = lot("a", 0, timedelta(days=-1))
    gone.forfeited = True
    got = forecast(
        {date(2026, 11, 30): 700}, [gone, lot("b", 300, timedelta(days=30))], 300, AT, TOKYO
    )
    assert got.runs_out_on == date(2026, 12, 3)
    assert got.expiring_unused_jpy == 0


@pytest.mark.parametrize(
    ("rate", "package"),
    [
        (0, 1_000),
        (11, 1_000),
        (12, 1_000),
        (23, 2_000),
        (1_000, 90_000),
    ],
)
def test_suggested_package_is_a_whole_number_of_packages(rate: int, package: int) -> None:
    assert suggested_package(rate, 90) == package


def test_a_lot_past_expiry_awaiting_its_forfeit_runs_out_at_once_not_in_the_past() -> None:
    # Expired 2026-11-29 23:30 Tokyo; the forecast is made on the 30th, before the forfeit.
    at = datetime(2026, 11, 29, 15, 10, tzinfo=UTC)  # 2026-11-30 00:10 in Tokyo
    expired = Lot(
        lot_id="a",
        amount_jpy=1_000,
        granted_at=at - timedelta(days=90, minutes=40),
        expires_at=at - timedelta(minutes=40),
        source="purchase",
        remaining_jpy=100,
    )
    got = forecast({date(2026, 11, 29): 70}, [expired], 100, at, TOKYO)
    assert got.usage_jpy_per_day == 10
    assert got.expiring_unused_jpy == 100
    assert got.runs_out_on == date(2026, 11, 30)  # not the 29th, which is already over
