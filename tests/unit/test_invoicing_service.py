"""Month close through the service against the in-memory store: no database, milliseconds."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from tests.unit.fake_store import FakeEncoder, FakeStore
from worker.domain.errors import BillingError, MonthNotEnded
from worker.domain.events import PostpayCharge
from worker.domain.invoicing import InvoiceLine
from worker.service.invoicing import close_period, lagging_behind, unclosed_periods

TOKYO = ZoneInfo("Asia/Tokyo")
AFTER_JANUARY = datetime(2026, 2, 3, tzinfo=UTC)


def usage(
    event_id: str,
    account: str,
    when: datetime,
    country: str,
    price: int,
    segments: int,
    from_lots: int = 0,
) -> PostpayCharge:
    local = when.astimezone(TOKYO)
    period = f"{local.year:04d}-{local.month:02d}"
    return PostpayCharge(
        event_id, account, when, period, country, price, segments, price * segments, from_lots
    )


def seeded() -> FakeStore:
    store = FakeStore()
    for item in [
        usage("a1", "acc-a", datetime(2026, 1, 10, tzinfo=UTC), "JP", 3, 2),
        usage("a2", "acc-a", datetime(2026, 1, 20, tzinfo=UTC), "JP", 3, 4, from_lots=5),
        usage("b1", "acc-b", datetime(2026, 1, 15, tzinfo=UTC), "US", 10, 1),
        # 2026-01-31 16:00 UTC is 1 February in Tokyo: February's usage.
        usage("b2", "acc-b", datetime(2026, 1, 31, 16, tzinfo=UTC), "US", 10, 1),
    ]:
        store.db.postpay[item.event_id] = item
    return store


async def close(store: FakeStore, period: str, now: datetime = AFTER_JANUARY) -> object:
    return await close_period(store, period, now, TOKYO, FakeEncoder().invoice)


async def test_closing_a_month_invoices_each_postpay_account_once() -> None:
    store = seeded()
    invoices = await close_period(store, "2026-01", AFTER_JANUARY, TOKYO, FakeEncoder().invoice)
    assert invoices is not None
    a, b = invoices
    assert (a.invoice_id, a.total_jpy, a.due_date) == ("INV-2026-01-acc-a", 13, date(2026, 2, 28))
    assert a.lines == (
        InvoiceLine("SMS to JP", "JP", 3, 6, 18, "2026-01"),
        InvoiceLine("Prepaid credit applied", None, -5, 1, -5, "2026-01"),
    )
    assert (b.invoice_id, b.total_jpy) == ("INV-2026-01-acc-b", 10)
    assert b.lines == (InvoiceLine("SMS to US", "US", 10, 1, 10, "2026-01"),)
    assert [m.message_id for m in store.db.outbox] == ["INV-2026-01-acc-a", "INV-2026-01-acc-b"]
    assert store.db.closes == {"2026-01": 2}
    assert store.db.invoiced == {
        "a1": "INV-2026-01-acc-a",
        "a2": "INV-2026-01-acc-a",
        "b1": "INV-2026-01-acc-b",
    }
    assert store.units == 1
    assert await store.is_closed("2026-01")


async def test_a_second_close_of_the_same_month_publishes_nothing() -> None:
    store = seeded()
    await close(store, "2026-01")
    assert await close(store, "2026-01") is None
    assert len(store.db.outbox) == 2
    assert len(store.db.invoices) == 2


async def test_a_month_that_has_not_ended_is_refused_before_any_unit_of_work() -> None:
    store = seeded()
    with pytest.raises(MonthNotEnded) as refused:
        await close(store, "2026-02", datetime(2026, 2, 20, tzinfo=UTC))
    assert isinstance(refused.value, BillingError)
    assert not refused.value.retriable
    assert store.units == 0
    assert store.db.closes == {}


async def test_usage_late_for_a_closed_month_lands_on_the_next_invoice() -> None:
    store = seeded()
    await close(store, "2026-01")
    late = usage("a3", "acc-a", datetime(2026, 1, 25, tzinfo=UTC), "JP", 3, 1)
    store.db.postpay[late.event_id] = late
    invoices = await close(store, "2026-02", datetime(2026, 3, 2, tzinfo=UTC))
    assert isinstance(invoices, list)
    a, b = invoices
    assert a.lines == (
        InvoiceLine("SMS to JP (late usage from 2026-01)", "JP", 3, 1, 3, "2026-01"),
    )
    assert (a.invoice_id, a.total_jpy) == ("INV-2026-02-acc-a", 3)
    assert (b.invoice_id, b.total_jpy) == ("INV-2026-02-acc-b", 10)


async def test_unclosed_periods_start_at_the_oldest_open_usage() -> None:
    store = seeded()
    assert await unclosed_periods(store, "2026-03") == ["2026-01", "2026-02", "2026-03"]
    await close(store, "2026-01")
    assert await unclosed_periods(store, "2026-03") == ["2026-02", "2026-03"]


async def test_unclosed_periods_without_open_usage_is_the_due_month() -> None:
    store = FakeStore()
    assert await unclosed_periods(store, "2026-03") == ["2026-03"]


async def test_unclosed_periods_reach_back_twelve_months_at_most() -> None:
    store = FakeStore()
    old = usage("x1", "acc-x", datetime(2024, 1, 10, tzinfo=UTC), "JP", 3, 1)
    store.db.postpay[old.event_id] = old
    store.db.closes["2025-06"] = 0
    assert await unclosed_periods(store, "2026-03") == [
        "2025-04",
        "2025-05",
        "2025-07",
        "2025-08",
        "2025-09",
        "2025-10",
        "2025-11",
        "2025-12",
        "2026-01",
        "2026-02",
        "2026-03",
    ]


async def test_lag_is_measured_against_the_first_end_offsets_seen() -> None:
    store = FakeStore()
    assert await lagging_behind(store, "2026-01", {"u:0": (5, 10), "a:0": (0, 3)}) == 5 + 3
    # Later input does not move the mark: only what was there when the month became closable.
    assert await lagging_behind(store, "2026-01", {"u:0": (12, 20), "a:0": (3, 9)}) == 0
    # A partition missing from the group's offsets counts as nothing committed.
    assert await lagging_behind(store, "2026-01", {"u:0": (12, 20)}) == 3
