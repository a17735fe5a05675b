"""The month-close alert's gauge: when the oldest month still open is due to close."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.config import Settings
from worker.entrypoints.month_close import MonthCloser
from worker.metrics import Metrics

SETTINGS = Settings(month_close_grace_s=900)  # Asia/Tokyo, 15 minutes of grace


def closer() -> MonthCloser:
    return MonthCloser(SETTINGS, store=None, encoder=None, metrics=Metrics())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pending", "now", "due"),
    [
        # September still open: due at its end in Tokyo (Sep 30 15:00 UTC) plus grace
        (["2026-09", "2026-10"], "2026-11-01T00:00:00Z", "2026-09-30T15:15:00Z"),
        # all closed, October ended 10 minutes ago in Tokyo: October is next, grace not over
        ([], "2026-10-31T15:10:00Z", "2026-10-31T15:15:00Z"),
        # all closed and October's grace is over: November is next
        ([], "2026-10-31T15:20:00Z", "2026-11-30T15:15:00Z"),
    ],
)
def test_the_due_time_is_the_oldest_open_months_end_plus_grace(
    pending: list[str], now: str, due: str
) -> None:
    at = datetime.fromisoformat(now)
    assert closer().due_at(pending, at) == datetime.fromisoformat(due).astimezone(UTC)


def test_the_gauge_is_unknown_until_the_first_tick() -> None:
    value = Metrics().month_close_due._value.get()  # type: ignore[attr-defined]
    assert value != value  # NaN: the alert compares false on it
