"""Where an event's time goes: the stage trace, the relay's wake-up, the bench's reading."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from benchmarks.workers import stage_stats
from worker.adapters.relay import OutboxRelay
from worker.entrypoints.stages import StageTrace
from worker.metrics import Metrics
from worker.service.ports import Dead, InputRecord


def _dead(source: str, partition: int, offset: int, timestamp_ms: int) -> Dead:
    record = InputRecord(
        source,  # type: ignore[arg-type]
        f"t-{source}",
        partition,
        offset,
        b"k",
        b"v",
        timestamp_ms,
    )
    return Dead(record, "invalid_json", "test")


def _sum(metrics: Metrics, stage: str) -> float:
    value = metrics.registry.get_sample_value("billing_stage_seconds_sum", {"stage": stage})
    return 0.0 if value is None else value


def _count(metrics: Metrics, stage: str) -> float:
    value = metrics.registry.get_sample_value("billing_stage_seconds_count", {"stage": stage})
    return 0.0 if value is None else value


def test_a_batch_leader_is_timed_from_the_broker_through_fetch_and_queue() -> None:
    metrics = Metrics()
    trace = StageTrace(metrics)
    now_wall, now_mono = time.time(), time.monotonic()
    # Appended 300 ms before the consumer returned it; returned 200 ms before it was added.
    first = [_dead("usage", 0, 10, int((now_wall - 0.3) * 1000)), _dead("usage", 0, 11, 0)]
    trace.added(first, now_wall, now_mono - 0.2)
    trace.released(first[0])
    assert _sum(metrics, "fetch") == pytest.approx(0.3, abs=0.002)
    assert _sum(metrics, "queue") == pytest.approx(0.2, abs=0.05)
    assert _count(metrics, "align") == 1


def test_a_later_batch_is_timed_by_the_fetch_that_brought_its_leader() -> None:
    metrics = Metrics()
    trace = StageTrace(metrics)
    now_wall, now_mono = time.time(), time.monotonic()
    trace.added([_dead("usage", 0, 10, 0), _dead("usage", 0, 11, 0)], now_wall - 5, now_mono)
    second = [_dead("usage", 0, 12, int((now_wall - 0.1) * 1000))]
    trace.added(second, now_wall, now_mono)
    trace.released(second[0])
    # 100 ms after its own timestamp, not five seconds after the first fetch.
    assert _sum(metrics, "fetch") == pytest.approx(0.1, abs=0.002)


def test_a_record_of_an_unknown_side_is_not_timed() -> None:
    metrics = Metrics()
    trace = StageTrace(metrics)
    trace.released(_dead("account", 3, 0, 0))
    assert _count(metrics, "fetch") == 0


class _Conn:
    """Answers the relay's reads; a commit elsewhere wakes the relay while it reads."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay

    async def fetch(self, *_: Any) -> list[Any]:
        self.relay.wake()
        return []

    async def fetchrow(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {"n": 0, "oldest_s": 0.0, "parked": 0}


async def test_a_wake_up_during_a_round_starts_the_next_round_at_once() -> None:
    relay = OutboxRelay(
        "postgresql://unused",
        {"bootstrap_servers": "unused:9092"},
        "c",
        Metrics(),
        poll_interval_s=60,
    )
    await relay.relay_once(_Conn(relay), producer=None)  # type: ignore[arg-type]
    # Without the wake-up the relay would sleep its 60 s poll interval.
    await asyncio.wait_for(relay._idle(asyncio.Event()), timeout=5)


def test_stage_quantiles_come_from_the_bucket_counts_of_the_window() -> None:
    before = {"fetch": ({0.01: 1.0, 0.1: 1.0, math.inf: 1.0}, 1.0, 0.005)}
    # In the window: 2 under 10 ms, 4 between 10 and 100 ms, 2 above; 0.4 s in all.
    after = {"fetch": ({0.01: 3.0, 0.1: 7.0, math.inf: 9.0}, 9.0, 0.405)}
    stats = stage_stats(before, after)["fetch"]
    assert stats.count == 8
    assert stats.mean_ms == pytest.approx(50.0)
    # rank 4 of 8 lies halfway through the 4 between 10 and 100 ms: 10 + 90 / 4 * 2
    assert stats.p50_ms == pytest.approx(55.0)
    # rank 7.92 lies above the highest finite bound: reported as that bound
    assert stats.p99_ms == pytest.approx(100.0)
