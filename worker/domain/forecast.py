"""Usage forecast for a prepay account: how fast it spends, when it runs out, what expires.

Computed from event time and the account's state only (no clock), so a replay yields the
same forecast. Usage is kept as daily totals in the business time zone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from worker.domain.lots import Lot

WINDOW_DAYS = 7
PACKAGE_JPY = 1_000
_DAY_S = 86_400


@dataclass(frozen=True)
class Forecast:
    """What the reminder tells the customer about their spending."""

    usage_jpy_per_day: int
    runs_out_on: date | None
    expiring_unused_jpy: int
    suggested_package_jpy: int


def window_days(at: datetime, zone: tzinfo) -> list[date]:
    """The business dates the daily rate averages over: the date of `at` and the 6 before."""
    today = at.astimezone(zone).date()
    return [today - timedelta(days=n) for n in range(WINDOW_DAYS)]


def usage_rate(usage_by_day: Mapping[date, int], at: datetime, zone: tzinfo) -> int:
    """JPY per day over the window, rounded half up."""
    total = sum(usage_by_day.get(day, 0) for day in window_days(at, zone))
    return (2 * total + WINDOW_DAYS) // (2 * WINDOW_DAYS)


def suggested_package(rate_jpy_per_day: int, validity_days: int) -> int:
    """The largest multiple of JPY 1,000 (at least one package) the rate uses up in time."""
    return max(PACKAGE_JPY, rate_jpy_per_day * validity_days // PACKAGE_JPY * PACKAGE_JPY)


def _local_date(at: datetime, zone: tzinfo) -> date:
    """The business date of `at`; at the very end of the range, where the zone's offset would
    carry it past year 9999, its UTC date (a lot may expire there; nothing may overflow)."""
    try:
        return at.astimezone(zone).date()
    except OverflowError:
        return at.date()


def _seconds(delta: timedelta) -> int:
    return delta // timedelta(seconds=1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def forecast(
    usage_by_day: Mapping[date, int],
    lots: Iterable[Lot],
    balance_jpy: int,
    at: datetime,
    zone: tzinfo,
    validity_days: int = 90,
) -> Forecast:
    """Spend the lots at the account's recent daily rate, soonest expiry first, from `at` on.

    Credit still in a lot when it expires is `expiring_unused_jpy`; the balance runs out
    when spending and forfeits together have taken `balance_jpy` from the lots.
    """
    rate = usage_rate(usage_by_day, at, zone)
    open_lots = sorted(
        (lot for lot in lots if not lot.forfeited and lot.remaining_jpy > 0),
        key=lambda lot: (lot.expires_at, lot.granted_at, lot.lot_id),
    )
    cursor = at
    unused = 0
    to_go = balance_jpy  # balance still to lose before it reaches zero
    runs_out: datetime | None = None
    for lot in open_lots:
        spendable_s = max(_seconds(lot.expires_at - cursor), 0)
        spent = min(lot.remaining_jpy, rate * spendable_s // _DAY_S)
        if runs_out is None and 0 < to_go <= spent:
            runs_out = cursor + timedelta(seconds=_ceil_div(to_go * _DAY_S, rate))
        to_go -= spent
        left = lot.remaining_jpy - spent
        if left == 0:
            cursor += timedelta(seconds=_ceil_div(spent * _DAY_S, rate)) if spent else timedelta()
            continue
        unused += left
        if runs_out is None and 0 < to_go <= left:
            # A lot already past expiry (its forfeit waits for late usage) is lost at once.
            runs_out = max(lot.expires_at, cursor)
        to_go -= left
        cursor = max(cursor, lot.expires_at)
    return Forecast(
        usage_jpy_per_day=rate,
        runs_out_on=(
            None
            if rate == 0 or balance_jpy <= 0 or runs_out is None
            else _local_date(runs_out, zone)
        ),
        expiring_unused_jpy=unused,
        suggested_package_jpy=suggested_package(rate, validity_days),
    )
