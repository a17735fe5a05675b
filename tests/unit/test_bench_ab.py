"""The A/B rows of a benchmark entry: medians, the speed-up line and CPU per event per side."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.kit import CpuSnapshot
from benchmarks.report import Results, _ab_details, table
from benchmarks.workers import BacklogRun, compared_digests


def _run(seconds: float, worker_s: float, postgres_s: float, kafka_s: float) -> BacklogRun:
    cpu = CpuSnapshot(worker_s, postgres_s, kafka_s, 0.1, 1.0, 2.0 * seconds)
    return BacklogRun(1, 10_000, seconds, [100.0], cpu, {}, "d1")


def _results() -> Results:
    r = Results(params={}, machine={}, commit="abc1234", base="main (5cfc42b)")
    # 10,000 events each: base 1,000, 2,000, 4,000 ev/s; this 2,000, 5,000, 8,000 ev/s.
    r.ab = [
        ("base", _run(10.0, 0.5, 0.3, 0.1)),
        ("this", _run(5.0, 0.3, 0.2, 0.1)),
        ("base", _run(5.0, 0.6, 0.3, 0.1)),
        ("this", _run(2.0, 0.2, 0.1, 0.1)),
        ("base", _run(2.5, 0.7, 0.4, 0.1)),
        ("this", _run(1.25, 0.25, 0.15, 0.1)),
    ]
    return r


def test_the_speed_up_is_the_ratio_of_the_medians() -> None:
    text = table(_results())
    # medians: base 2,000 ev/s, this 5,000 ev/s
    assert "medians 2,000 and 5,000" in text
    assert "| speed-up vs main (5cfc42b): 2.50× |" in text
    assert "≥ 2.0×: met" in text


def test_cpu_per_event_is_the_median_per_side_and_part() -> None:
    text = table(_results())
    # base worker 50, 60, 70 µs -> 60; PostgreSQL 30, 30, 40 -> 30; Kafka 10 each
    # this worker 30, 20, 25 -> 25; PostgreSQL 20, 10, 15 -> 15; Kafka 10 each
    assert "base 60.0 + 30.0 + 10.0 = 100.0 µs; this 25.0 + 15.0 + 10.0 = 50.0 µs" in text
    assert "half of base: met" in text


def test_each_round_and_the_digests_are_listed() -> None:
    lines = _ab_details(_results())
    assert lines[0].startswith("- A/B round 1, base: 1,000 ev/s (10.0 s)")
    assert lines[-1] == "- A/B state digests of every round, base and this: equal"


def test_a_base_too_old_for_the_digest_is_left_out_of_the_comparison() -> None:
    r = _results()
    r.ab = [(side, replace(run, digest="") if side == "base" else run) for side, run in r.ab]
    lines = _ab_details(r)
    assert lines[-1] == (
        "- A/B state digests of every round, base and this: equal where computed"
        " (an older schema has none)"
    )
    assert compared_digests(run.digest for _, run in r.ab) == {"d1"}
