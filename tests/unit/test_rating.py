"""Rating: price per segment by destination country, in force at the event's time."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import T0, examples
from worker.domain.errors import Rejected
from worker.domain.rating import Rate, Rated, RateTable, destination_country, rate_usage

CHANGE = T0 + timedelta(days=10)
TABLE = RateTable(
    [
        Rate("JP", 10, T0 - timedelta(days=3650)),
        Rate("US", 12, T0 - timedelta(days=3650)),
        Rate("US", 15, CHANGE),
        Rate("GB", 14, T0),
    ]
)


def test_japan_costs_ten_yen_per_segment() -> None:
    rated = rate_usage(TABLE, "JP", "+819012345678", 3, T0)

    assert (rated.country, rated.unit_price_jpy, rated.segments) == ("JP", 10, 3)
    assert rated.amount_jpy == 30


def test_japan_costs_ten_yen_even_when_the_configured_table_omits_it() -> None:
    rated = rate_usage(RateTable([Rate("US", 12, T0)]), None, "+819012345678", 2, T0)

    assert rated.amount_jpy == 20


def test_a_fresh_table_rates_the_country_of_the_number_and_again_the_same() -> None:
    # A table of its own: the module's TABLE remembers what earlier tests rated.
    table = RateTable([Rate("US", 12, T0)])

    first = rate_usage(table, None, "+12127365000", 2, T0)
    again = rate_usage(table, None, "+12127365000", 2, T0)

    assert first == Rated("US", 12, 2)
    assert again is first  # one shared Rated per country, price and segments


def test_country_field_wins_over_the_number() -> None:
    assert rate_usage(TABLE, "JP", "+12127365000", 1, T0).country == "JP"


@pytest.mark.parametrize(
    ("destination", "country"),
    [
        ("+819012345678", "JP"),
        ("+12127365000", "US"),
        ("+442079460000", "GB"),
        ("+14165550100", "CA"),
    ],
)
def test_country_comes_from_the_e164_number_when_absent(destination: str, country: str) -> None:
    assert destination_country(None, destination) == country


def test_e164_number_is_rated_by_its_country() -> None:
    rated = rate_usage(TABLE, None, "+1 212 736 5000", 2, CHANGE - timedelta(seconds=1))

    assert (rated.country, rated.unit_price_jpy, rated.amount_jpy) == ("US", 12, 24)


@pytest.mark.parametrize("destination", ["+80012345678", "+8823412345", "+999", "not-a-number"])
def test_number_without_a_country_is_an_unknown_destination(destination: str) -> None:
    with pytest.raises(Rejected) as refused:
        rate_usage(TABLE, None, destination, 1, T0)

    assert refused.value.code == "unknown_destination"
    assert destination in refused.value.reason  # the dead letter says which number


def test_country_without_a_rate_is_refused_with_no_rate() -> None:
    with pytest.raises(Rejected) as refused:
        rate_usage(TABLE, None, "+14165550100", 1, T0)  # Canada

    assert refused.value.code == "no_rate"
    assert "CA" in refused.value.reason


def test_usage_before_a_countrys_first_rate_has_no_rate() -> None:
    with pytest.raises(Rejected) as refused:
        rate_usage(TABLE, "GB", "+442079460000", 1, T0 - timedelta(seconds=1))

    assert refused.value.code == "no_rate"


@pytest.mark.parametrize(
    ("when", "price"),
    [(CHANGE - timedelta(microseconds=1), 12), (CHANGE, 15), (CHANGE + timedelta(days=1), 15)],
)
def test_price_change_applies_by_event_time(when: datetime, price: int) -> None:
    assert TABLE.unit_price("US", when) == price


def test_rates_may_be_configured_in_any_order() -> None:
    table = RateTable([Rate("US", 15, CHANGE), Rate("US", 12, T0)])

    assert table.unit_price("US", T0) == 12
    assert table.unit_price("US", CHANGE) == 15


def test_negative_price_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        RateTable([Rate("US", -1, T0)])


@settings(max_examples=examples(100), deadline=None)
@given(segments=st.integers(1, 255), offset_s=st.integers(-86_400 * 30, 86_400 * 30))
def test_amount_is_unit_price_in_force_times_segments(segments: int, offset_s: int) -> None:
    when = CHANGE + timedelta(seconds=offset_s)

    rated = rate_usage(TABLE, "US", "+12127365000", segments, when)

    assert rated.amount_jpy == (15 if when >= CHANGE else 12) * segments


def test_a_free_destination_is_a_valid_rate() -> None:
    free = RateTable([Rate("XX", 0, T0)])
    assert free.unit_price("XX", T0) == 0
    with pytest.raises(ValueError, match="negative price"):
        RateTable([Rate("XX", -1, T0)])
