"""Price per SMS segment by destination country, with effective-from dates."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

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
        # Looked up once: numbers repeat (a sender's customers), and so do prices.
        self._regions: dict[str, str | None] = {}
        self._rated: dict[tuple[str, int, int], Rated] = {}
        for country, items in by_country.items():
            items.sort(key=lambda r: r.effective_from)
            # In UTC, as event times are: comparing within one zone skips the offset lookups.
            self._starts[country] = [r.effective_from.astimezone(UTC) for r in items]
            self._prices[country] = [r.unit_price_jpy for r in items]

    def unit_price(self, country: str, at: datetime) -> int | None:
        # Japan's price is a business rule (SPEC §2); the table may only override it.
        fallback = JAPAN_UNIT_PRICE_JPY if country == "JP" else None
        starts = self._starts.get(country)
        if not starts:
            return fallback
        index = bisect.bisect_right(starts, at) - 1
        return self._prices[country][index] if index >= 0 else fallback

    def region(self, destination: str) -> str | None:
        """`destination_country(None, destination)`, remembered for the most recent numbers."""
        try:
            return self._regions[destination]
        except KeyError:
            pass
        if len(self._regions) >= _REGION_CACHE_SIZE:
            self._regions.clear()  # bounded memory; refilled by the numbers still in use
        region = self._regions[destination] = destination_country(None, destination)
        return region

    def rated(self, country: str, unit_price_jpy: int, segments: int) -> Rated:
        """One shared (immutable) `Rated` per country, price and segment count."""
        key = (country, unit_price_jpy, segments)
        found = self._rated.get(key)
        if found is None:
            found = self._rated[key] = Rated(country, unit_price_jpy, segments)
        return found


_REGION_CACHE_SIZE = 100_000


def destination_country(country: str | None, destination: str) -> str | None:
    """The event's `country`, else the region of its E.164 number."""
    if country:
        return country
    region = _sole_region(destination)
    if region is not None:
        return region
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
    resolved = country or table.region(destination)
    if resolved is None:
        raise Rejected("unknown_destination", f"no country for destination {destination}")
    price = table.unit_price(resolved, at)
    if price is None:
        raise Rejected("no_rate", f"no rate for country {resolved} at {at.isoformat()}")
    return table.rated(resolved, price, segments)


_E164 = re.compile(r"\+([1-9][0-9]{1,14})")
_CALLING_CODE_DIGITS = 3


def _sole_region(destination: str) -> str | None:
    """The region `parse` + `region_code_for_number` give an E.164 number whose calling code
    belongs to one region only (+81 is JP), read from phonenumbers' own calling-code table
    without the full parse (it dominates decoding); None means: parse it."""
    match = _E164.fullmatch(destination)
    if match is None:
        return None
    digits = match.group(1)
    # Calling codes are prefix-free: the first known 1-3 digit prefix is the code, as in parse.
    for size in range(1, _CALLING_CODE_DIGITS + 1):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:size]))
        if regions is None:
            continue
        # Shorter national numbers are left to parse, which refuses some of them.
        if len(regions) == 1 and regions[0] != "001" and len(digits) - size >= 4:
            return str(regions[0])
        return None
    return None
