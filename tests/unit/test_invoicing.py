"""Month-end invoices: calendar months in Asia/Tokyo, lines per country and unit price."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import Book, examples
from worker.domain.events import PostpayCharge
from worker.domain.invoicing import (
    InvoiceLine,
    build_invoice,
    closing_window,
    due_date,
    invoice_id,
    next_period,
    period_bounds,
    period_of,
    previous_period,
)
from worker.domain.rating import Rated

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=TOKYO)


def usage(
    event_id: str,
    occurred_at: datetime,
    country: str,
    price: int,
    segments: int,
    from_lots_jpy: int = 0,
) -> PostpayCharge:
    return PostpayCharge(
        event_id=event_id,
        account_id="acc-1",
        occurred_at=occurred_at,
        period=period_of(occurred_at, TOKYO),
        country=country,
        unit_price_jpy=price,
        segments=segments,
        amount_jpy=price * segments,
        from_lots_jpy=from_lots_jpy,
    )


@pytest.mark.parametrize(
    ("instant", "period"),
    [
        (jst(2026, 10, 31, 23, 59, 59), "2026-10"),
        (jst(2026, 11, 1, 0, 0, 0), "2026-11"),
        (datetime(2026, 10, 31, 14, 59, 59, tzinfo=UTC), "2026-10"),
        (datetime(2026, 10, 31, 15, 0, 0, tzinfo=UTC), "2026-11"),
        (datetime(2026, 12, 31, 14, 59, 59, 999_999, tzinfo=UTC), "2026-12"),
        (datetime(2026, 12, 31, 15, 0, 0, tzinfo=UTC), "2027-01"),
        (datetime(2027, 2, 28, 15, 0, 0, tzinfo=UTC), "2027-03"),
    ],
)
def test_period_is_the_calendar_month_in_tokyo(instant: datetime, period: str) -> None:
    assert period_of(instant, TOKYO) == period


@pytest.mark.parametrize(
    ("period", "due"),
    [
        ("2026-10", date(2026, 11, 30)),
        ("2026-12", date(2027, 1, 31)),
        ("2027-01", date(2027, 2, 28)),
        ("2028-01", date(2028, 2, 29)),
        ("2027-08", date(2027, 9, 30)),
    ],
)
def test_invoice_is_due_on_the_last_day_of_the_following_month(period: str, due: date) -> None:
    assert due_date(period) == due


@pytest.mark.parametrize(
    ("period", "following"),
    [("2026-11", "2026-12"), ("2026-12", "2027-01"), ("2027-01", "2027-02")],
)
def test_next_period_rolls_over_the_year(period: str, following: str) -> None:
    assert next_period(period) == following


def test_period_bounds_are_tokyo_midnights() -> None:
    start, end = period_bounds("2026-12", TOKYO)

    assert start == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert end == datetime(2026, 12, 31, 15, 0, tzinfo=UTC)
    assert period_of(start, TOKYO) == "2026-12"
    assert period_of(end - timedelta(microseconds=1), TOKYO) == "2026-12"
    assert period_of(end, TOKYO) == "2027-01"


@settings(max_examples=examples(200), deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    )
)
def test_every_instant_lies_within_the_bounds_of_its_period(instant: datetime) -> None:
    start, end = period_bounds(period_of(instant, TOKYO), TOKYO)

    assert start <= instant < end


def test_no_usage_means_no_invoice() -> None:
    assert build_invoice("acc-1", "2026-10", [], TOKYO) is None


def test_lines_group_usage_per_country_and_unit_price_in_segments() -> None:
    items = [
        usage("u1", jst(2026, 10, 2), "JP", 10, 3),
        usage("u2", jst(2026, 10, 9), "US", 12, 1),
        usage("u3", jst(2026, 10, 20), "JP", 10, 2),
    ]

    invoice = build_invoice("acc-1", "2026-10", items, TOKYO)

    assert invoice is not None
    assert invoice.invoice_id == invoice_id("acc-1", "2026-10")
    assert invoice.due_date == date(2026, 11, 30)
    assert [
        (x.country, x.unit_price_jpy, x.quantity, x.amount_jpy, x.period) for x in invoice.lines
    ] == [("JP", 10, 5, 50, "2026-10"), ("US", 12, 1, 12, "2026-10")]
    assert invoice.total_jpy == 62


def test_credit_applied_is_one_negative_line_and_the_total_is_what_went_below_zero() -> None:
    items = [
        usage("u1", jst(2026, 10, 2), "JP", 10, 10, from_lots_jpy=60),
        usage("u2", jst(2026, 10, 3), "JP", 10, 10, from_lots_jpy=40),
        usage("u3", jst(2026, 10, 4), "JP", 10, 10),
    ]

    invoice = build_invoice("acc-1", "2026-10", items, TOKYO)

    assert invoice is not None
    *usage_lines, credit = invoice.lines
    assert [x.amount_jpy for x in usage_lines] == [300]
    assert credit == InvoiceLine("Prepaid credit applied", None, -100, 1, -100, "2026-10")
    assert invoice.total_jpy == 200 == sum(x.amount_jpy for x in invoice.lines)


def test_rate_change_mid_month_yields_two_lines() -> None:
    items = [
        usage("u1", jst(2026, 10, 2), "US", 12, 4),
        usage("u2", jst(2026, 10, 20), "US", 15, 2),
    ]

    invoice = build_invoice("acc-1", "2026-10", items, TOKYO)

    assert invoice is not None
    assert [(x.unit_price_jpy, x.quantity, x.amount_jpy) for x in invoice.lines] == [
        (12, 4, 48),
        (15, 2, 30),
    ]


def test_late_usage_from_an_invoiced_month_is_its_own_line_with_its_period() -> None:
    items = [
        usage("u1", jst(2026, 11, 3), "JP", 10, 2),
        usage("late", jst(2026, 10, 31, 23, 59, 59), "JP", 10, 1),
    ]

    invoice = build_invoice("acc-1", "2026-11", items, TOKYO)

    assert invoice is not None
    late, current = invoice.lines
    assert (late.period, late.quantity, late.amount_jpy) == ("2026-10", 1, 10)
    assert "2026-10" in late.description
    assert (current.period, current.quantity, current.amount_jpy) == ("2026-11", 2, 20)
    assert "late" not in current.description
    assert invoice.total_jpy == 30


def test_usage_in_the_first_hours_of_a_month_in_tokyo_is_that_months_not_late() -> None:
    # 00:30 on November 1 in Tokyo is still October 31 in UTC
    invoice = build_invoice(
        "acc-1", "2026-11", [usage("u1", jst(2026, 11, 1, 0, 30), "JP", 10, 1)], TOKYO
    )

    assert invoice is not None
    (line,) = invoice.lines
    assert (line.period, line.description) == ("2026-11", "SMS to JP")


def test_switch_to_postpay_mid_month_bills_only_usage_after_it_and_uses_credit_first() -> None:
    book = Book()
    book.open(jst(2026, 10, 1), test_credits_jpy=100)
    book.charge(50, jst(2026, 10, 5))
    book.switch_to_postpay(jst(2026, 10, 15))
    straddling = book.use(Rated("JP", 10, 10), jst(2026, 10, 20))  # 50 from credit, 50 below
    book.use(Rated("US", 12, 5), jst(2026, 10, 25))
    book.charge(20, jst(2026, 10, 10))  # late prepay-era usage: overdraft, not postpay

    assert [c.event_id for c in book.effects.postpay] == [straddling, "e5"]
    assert book.effects.postpay[0].from_lots_jpy == 50
    assert book.account.overdraft_jpy == 20
    invoice = build_invoice("acc-1", "2026-10", book.effects.postpay, TOKYO)
    assert invoice is not None
    assert [(x.country, x.unit_price_jpy, x.quantity, x.amount_jpy) for x in invoice.lines] == [
        ("JP", 10, 10, 100),
        ("US", 12, 5, 60),
        (None, -50, 1, -50),
    ]
    assert invoice.total_jpy == 110
    assert book.account.balance_jpy == -110 - 20


def test_usage_at_the_instant_of_the_switch_is_postpay() -> None:
    book = Book()
    book.open(jst(2026, 10, 1), test_credits_jpy=0)
    book.switch_to_postpay(jst(2026, 10, 15))

    charge = book.charge(10, jst(2026, 10, 15))

    assert [c.event_id for c in book.effects.postpay] == [charge]
    assert book.effects.postpay[0].period == "2026-10"


@pytest.mark.parametrize(
    ("period", "before"), [("2026-01", "2025-12"), ("2026-02", "2026-01"), ("2026-12", "2026-11")]
)
def test_the_month_before(period: str, before: str) -> None:
    assert previous_period(period) == before


def test_a_close_catches_up_on_exactly_the_twelve_months_up_to_the_due_one() -> None:
    window = closing_window("2026-05")
    assert window[0] == "2025-06"
    assert window[-1] == "2026-05"
    assert len(window) == 12
