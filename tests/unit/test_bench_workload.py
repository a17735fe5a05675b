"""The benchmark's traffic is reproducible and knows what the worker must make of it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from benchmarks.workload import Generator, Mix, latency_setup, main_workload, skewed_share

START = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)


def test_the_same_seed_gives_the_same_records() -> None:
    first = main_workload(Generator(7, "run", START), accounts=50, events=2_000)
    second = main_workload(Generator(7, "run", START), accounts=50, events=2_000)
    assert first.account == second.account
    assert first.usage == second.usage


def test_expected_outcomes_add_up_to_the_records() -> None:
    work = main_workload(Generator(1, "run", START), accounts=50, events=5_000)
    assert work.applied_usage + work.duplicates + work.dead == len(work.usage) == 5_000
    assert work.applied_account == len(work.account)
    assert len(work.rows) == work.applied_usage + work.applied_account
    assert work.duplicates > 0
    assert work.dead > 0


def test_duplicates_repeat_an_earlier_record_byte_for_byte() -> None:
    work = main_workload(Generator(3, "run", START), accounts=20, events=3_000)
    seen: set[bytes] = set()
    repeats = 0
    for _, value in work.usage:
        repeats += value in seen
        seen.add(value)
    assert repeats == work.duplicates


def test_usage_is_mostly_japan_with_some_multi_segment_messages() -> None:
    work = main_workload(Generator(5, "run", START), accounts=100, events=5_000)
    valid = [orjson.loads(v) for _, v in work.usage if v.endswith(b"}") and b"+336" not in v]
    japan = sum(e["destination"].startswith("+81") for e in valid)
    assert 0.75 < japan / len(valid) < 0.95
    assert any(e["segments"] > 1 for e in valid)


def test_latency_accounts_sit_above_a_threshold_they_will_cross() -> None:
    setup, ids = latency_setup(Generator(1, "run", START), accounts=10, events=50)
    opened = [orjson.loads(v) for _, v in setup.account if b"account_opened" in v]
    assert len(opened) == len(ids) == 10
    # Up to twice an account's expected charges above the threshold: the busiest account
    # (a third of the events) may sit far above it, the quietest just above.
    credits = [e["test_credits"] for e in opened]
    assert all(c > 100 for c in credits)
    assert max(credits) <= 100 + 10 * 2 * 50 * skewed_share(0, 10)


def test_skewed_shares_add_up_to_one() -> None:
    assert abs(sum(skewed_share(i, 1000) for i in range(1000)) - 1) < 1e-9


def test_a_hot_account_sends_its_share_on_top_of_the_skew() -> None:
    accounts, events, hot = 100, 20_000, 0.5
    work = main_workload(Generator(2, "run", START, Mix(hot_share=hot)), accounts, events)
    first = b"run-acct-000000"
    sent = sum(key == first for key, _ in work.usage) / len(work.usage)
    # Drawn for the hot share first, else from the skew (index ~ u²): by hand,
    # 0.5 + 0.5 * (sqrt(1/100) - 0) = 0.55.
    assert abs(sent - 0.55) < 0.02


def test_no_hot_share_leaves_the_workload_unchanged() -> None:
    plain = main_workload(Generator(4, "run", START), accounts=30, events=1_000)
    cold = main_workload(Generator(4, "run", START, Mix(hot_share=0.0)), accounts=30, events=1_000)
    assert plain.usage == cold.usage
