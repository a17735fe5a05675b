"""The calling-code shortcut of `destination_country` answers as the full phonenumbers parse."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain import rating

CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def parsed_region(destination: str) -> str | None:
    """What `destination_country` answered before the shortcut: parse, then region."""
    try:
        number = phonenumbers.parse(destination, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    return region if region and region not in ("ZZ", "001") else None


e164 = st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True)
by_calling_code = st.builds(
    lambda code, national: f"+{code}{national}"[:16],
    st.sampled_from(CALLING_CODES),
    st.from_regex(r"[0-9]{0,14}", fullmatch=True),
)


# No deadline, and more than the default 120 s: the first lookups load phonenumbers metadata
# lazily, and 3,000 examples take over two minutes on a loaded machine (pytest-timeout's
# failure inside Hypothesis then shows up as a flaky test instead).
@pytest.mark.timeout(600)
@settings(max_examples=3000, deadline=None)
@given(st.one_of(e164, by_calling_code))
def test_shortcut_gives_the_region_the_full_parse_gives(destination: str) -> None:
    assert rating.destination_country(None, destination) == parsed_region(destination)


def test_shortcut_answers_for_single_region_codes_and_leaves_the_rest_to_parse() -> None:
    assert rating._sole_region("+819012345678") == "JP"
    assert rating._sole_region("+12125551234") is None  # +1: many regions
    assert rating._sole_region("+80012345678") is None  # non-geographic
    assert rating._sole_region("+815") is None  # too short to skip the parse
