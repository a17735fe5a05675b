"""Price per SMS segment by destination country, with effective-from dates."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import phonenumbers

from worker.domain.errors import Rejected

JAPAN_UNIT_PRICE_JPY = 10


@dataclass(frozen=True)
class Rate:
    """One price for one country from one instant on."""

    country: str
    unit_price_jpy: int
    effective_from: datetime


@dataclass(frozen=True)
class Rated:
    """A usage event priced: what one charge costs and why."""

    country: str
    unit_price_jpy: int
    segments: int

    @property
    def amount_jpy(self) -> int:
        return self.unit_price_jpy * self.segments


class RateTable:
    """Looks up the price in force for a country at an event's time."""

    def __init__(self, rates: Iterable[Rate]) -> None:
        by_country: dict[str, list[Rate]] = {}
        for rate in rates:
            if rate.unit_price_jpy < 0:
                raise ValueError(f"negative price for {rate.country}")
            by_country.setdefault(rate.country, []).append(rate)
        self._starts: dict[str, list[datetime]] = {}
        self._prices: dict[str, list[int]] = {}
        for country, items in by_country.items():
            items.sort(key=lambda r: r.effective_from)
            self._starts[country] = [r.effective_from for r in items]
            self._prices[country] = [r.unit_price_jpy for r in items]

    def unit_price(self, country: str, at: datetime) -> int | None:
        # Japan's price is a business rule (SPEC §2); the table may only override it.
        fallback = JAPAN_UNIT_PRICE_JPY if country == "JP" else None
        starts = self._starts.get(country)
        if not starts:
            return fallback
        index = bisect.bisect_right(starts, at) - 1
        return self._prices[country][index] if index >= 0 else fallback


def destination_country(country: str | None, destination: str) -> str | None:
    """The event's `country`, else the region of its E.164 number."""
    if country:
        return country
    try:
        number = phonenumbers.parse(destination, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    return region if region and region not in ("ZZ", "001") else None


def rate_usage(
    table: RateTable, country: str | None, destination: str, segments: int, at: datetime
) -> Rated:
    """Price one usage event, or refuse it when no rate applies."""
    resolved = destination_country(country, destination)
    if resolved is None:
        raise Rejected("unknown_destination", f"no country for destination {destination}")
    price = table.unit_price(resolved, at)
    if price is None:
        raise Rejected("no_rate", f"no rate for country {resolved} at {at.isoformat()}")
    return Rated(country=resolved, unit_price_jpy=price, segments=segments)
