"""`billing-worker lag` and the lag gauges: offset and time lag per partition, the table in the
columns of kafka-consumer-groups.sh, and retries of the broker's retriable errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    AuthenticationFailedError,
    GroupCoordinatorNotAvailableError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
)

from worker.adapters.kafka_admin import Offsets, lag_rows, retrying
from worker.entrypoints.views import lag_table
from worker.metrics import Metrics

USAGE, EVENTS = "sms.usage.v1", "billing.account-events.v1"


def test_time_lag_is_the_age_of_the_oldest_uncommitted_record_and_0_without_lag() -> None:
    offsets: Offsets = {
        TopicPartition(USAGE, 0): (10, 15),  # committed 10: the record at offset 10 is oldest
        TopicPartition(USAGE, 1): (None, 4),  # never committed: the first record is
        TopicPartition(USAGE, 2): (7, 7),  # caught up
        TopicPartition(USAGE, 3): (3, 9),  # its head could not be read in time
    }
    stamps_ms = {TopicPartition(USAGE, 0): 1_000_000, TopicPartition(USAGE, 1): 1_030_000}
    rows = lag_rows(offsets, stamps_ms, now_s=1_100.0)
    assert [(r["partition"], r["lag"], r["lag_seconds"]) for r in rows] == [
        (0, 5, 100.0),
        (1, 4, 70.0),
        (2, 0, 0.0),
        (3, 6, None),
    ]


def test_lag_of_transaction_markers_only_has_no_time_lag() -> None:
    """A transactional producer's commit marker counts in the offset lag; nothing to bill
    lies there, so the time lag is 0 rather than unknown."""
    rows = lag_rows({TopicPartition(USAGE, 0): (4, 5)}, {TopicPartition(USAGE, 0): None}, 9.0)
    assert (rows[0]["lag"], rows[0]["lag_seconds"]) == (1, 0.0)


def test_a_record_stamped_after_now_by_a_skewed_clock_counts_as_no_time_lag() -> None:
    rows = lag_rows({TopicPartition(USAGE, 0): (0, 1)}, {TopicPartition(USAGE, 0): 5_000}, 1.0)
    assert rows[0]["lag_seconds"] == 0.0


def test_the_table_has_the_consumer_groups_columns_and_a_dash_where_nothing_was_committed() -> None:
    report = {
        "group": "billing",
        "partitions": [
            {
                "topic": USAGE,
                "partition": 0,
                "committed": 10,
                "end": 15,
                "lag": 5,
                "lag_seconds": 100.25,
            },
            {
                "topic": USAGE,
                "partition": 1,
                "committed": None,
                "end": 4,
                "lag": 4,
                "lag_seconds": None,
            },
        ],
        "total": 9,
    }
    lines = lag_table(report).splitlines()
    assert lines[0].split() == [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "LAG-SECONDS",
    ]
    assert lines[1].split() == ["billing", USAGE, "0", "10", "15", "5", "100.2"]
    assert lines[2].split() == ["billing", USAGE, "1", "-", "4", "4", "-"]
    assert lines[3] == "total lag: 9"
    assert "None" not in lag_table(report)
    # columns line up under their headers
    assert lines[1].index("15") == lines[0].index("LOG-END-OFFSET")


def test_the_time_lag_gauge_leaves_out_a_partition_whose_age_is_unknown() -> None:
    metrics = Metrics()
    rows = lag_rows(
        {
            TopicPartition(USAGE, 0): (1, 3),
            TopicPartition(USAGE, 1): (2, 5),
            TopicPartition(EVENTS, 0): (4, 4),
        },
        {TopicPartition(USAGE, 0): 10_000},
        now_s=40.0,
    )
    metrics.set_lag("billing", rows)
    seconds = {
        s.labels["topic"] + "/" + s.labels["partition"]: s.value
        for family in metrics.registry.collect()
        if family.name == "kafka_consumergroup_lag_seconds"
        for s in family.samples
    }
    assert seconds == {f"{USAGE}/0": 30.0, f"{EVENTS}/0": 0.0}


class Clock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors: list[Exception], result: str = "read") -> Iterator[object]:
    yield from errors
    while True:
        yield result


async def test_retriable_broker_errors_are_retried_until_the_read_succeeds() -> None:
    clock = Clock()
    answers = failing(
        [GroupCoordinatorNotAvailableError(), LeaderNotAvailableError(), KafkaTimeoutError()]
    )

    async def read() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await retrying(read, 15.0, clock.sleep, clock) == "read"
    assert len(clock.sleeps) == 3


async def test_retries_stop_after_the_retry_window_with_the_last_error() -> None:
    clock = Clock()
    calls = 0

    async def read() -> object:
        nonlocal calls
        calls += 1
        raise GroupCoordinatorNotAvailableError()

    with pytest.raises(GroupCoordinatorNotAvailableError):
        await retrying(read, 15.0, clock.sleep, clock)
    assert clock.now == pytest.approx(15.0)
    assert 5 <= calls <= 20  # backoff from 0.2 s doubling to 2 s over 15 s


async def test_an_error_that_will_not_go_away_is_not_retried() -> None:
    clock = Clock()

    async def read() -> object:
        raise AuthenticationFailedError()

    with pytest.raises(AuthenticationFailedError):
        await retrying(read, 15.0, clock.sleep, clock)
    assert clock.sleeps == []
