"""Month-end invoices: calendar months in the business time zone, lines per country and price."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from worker.domain.events import PostpayCharge


def period_of(at: datetime, zone: tzinfo) -> str:
    """The `YYYY-MM` billing period an instant falls in, in the business zone."""
    local = at.astimezone(zone)
    return f"{local.year:04d}-{local.month:02d}"


def _parse(period: str) -> tuple[int, int]:
    year, month = period.split("-")
    return int(year), int(month)


def next_period(period: str) -> str:
    year, month = _parse(period)
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def previous_period(period: str) -> str:
    year, month = _parse(period)
    return f"{year - (month == 1):04d}-{(month - 2) % 12 + 1:02d}"


CATCH_UP_MONTHS = 12


def closing_window(due: str, months: int = CATCH_UP_MONTHS) -> list[str]:
    """The `months` months up to `due`, oldest first: the ones a close may still catch up on;
    older usage not yet invoiced lands on the oldest of them."""
    periods = [due]
    while len(periods) < months:
        periods.insert(0, previous_period(periods[0]))
    return periods


def period_bounds(period: str, zone: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of a period as aware instants in the business zone."""
    year, month = _parse(period)
    start = datetime(year, month, 1, tzinfo=zone)
    next_year, next_month = _parse(next_period(period))
    return start, datetime(next_year, next_month, 1, tzinfo=zone)


def due_date(period: str) -> date:
    """The last day of the month after the period."""
    year, month = _parse(next_period(period))
    return date(year, month, calendar.monthrange(year, month)[1])


def invoice_id(account_id: str, period: str) -> str:
    return f"INV-{period}-{account_id}"


@dataclass(frozen=True)
class InvoiceLine:
    description: str
    country: str | None
    unit_price_jpy: int
    quantity: int
    amount_jpy: int
    period: str


@dataclass(frozen=True)
class Invoice:
    """One account's bill for one period; published once, never changed."""

    invoice_id: str
    account_id: str
    period: str
    lines: tuple[InvoiceLine, ...]
    total_jpy: int
    due_date: date


def build_invoice(
    account_id: str, period: str, usage: Iterable[PostpayCharge], zone: tzinfo
) -> Invoice | None:
    """Group not-yet-invoiced postpay usage up to `period`; None when there is none."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    applied = 0
    total = 0
    for item in usage:
        item_period = period_of(item.occurred_at, zone)
        quantity_amount = groups.setdefault(
            (item_period, item.country, item.unit_price_jpy), [0, 0]
        )
        quantity_amount[0] += item.segments
        quantity_amount[1] += item.amount_jpy
        applied += item.from_lots_jpy
        total += item.amount_jpy - item.from_lots_jpy
    if not groups:
        return None
    lines = [
        InvoiceLine(
            description=_describe(country, item_period, period),
            country=country,
            unit_price_jpy=price,
            quantity=quantity,
            amount_jpy=amount,
            period=item_period,
        )
        for (item_period, country, price), (quantity, amount) in sorted(groups.items())
    ]
    if applied:
        lines.append(InvoiceLine("Prepaid credit applied", None, -applied, 1, -applied, period))
    return Invoice(
        invoice_id(account_id, period), account_id, period, tuple(lines), total, due_date(period)
    )


def _describe(country: str, item_period: str, period: str) -> str:
    text = f"SMS to {country}"
    return text if item_period == period else f"{text} (late usage from {item_period})"
