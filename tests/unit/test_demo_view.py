"""The demo's live view counts what was published since it started, even on a fresh broker."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError, LeaderNotAvailableError

from worker.config import Settings
from worker.entrypoints.demo import Options, Snapshot, Totals, _View

SETTINGS = Settings()
REMINDERS, INVOICES, DLQ = SETTINGS.topic_reminders, SETTINGS.topic_invoices, SETTINGS.topic_dlq


class FreshBroker:
    """Answers like a broker formatted a moment ago: the first read of the output ends fails,
    the next leaves a topic out (no leader yet), and group requests fail until told."""

    def __init__(self) -> None:
        self.end_reads = 0
        self.coordinator = False
        self.ends: dict[TopicPartition, int] = {
            TopicPartition(REMINDERS, 0): 5,
            TopicPartition(REMINDERS, 1): 7,
            TopicPartition(INVOICES, 0): 0,
            TopicPartition(DLQ, 0): 3,
        }

    async def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
        self.end_reads += 1
        if self.end_reads == 1:
            raise LeaderNotAvailableError()
        ends = {tp: end for tp, end in self.ends.items() if tp.topic in topics}
        if self.end_reads == 2:
            return {tp: end for tp, end in ends.items() if tp.topic != DLQ}
        return ends

    async def committed_and_end(
        self, group: str, topics: list[str]
    ) -> dict[TopicPartition, tuple[int | None, int]]:
        if not self.coordinator:
            raise GroupCoordinatorNotAvailableError()
        return {TopicPartition(topics[0], 0): (40, 42)}


def _view(reader: Any) -> _View:
    return _View(SETTINGS, reader, ["acc-1"], Options(), Totals())


async def test_the_baseline_is_asked_again_until_every_output_topic_answers() -> None:
    broker = FreshBroker()
    view = _view(broker)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await view.baseline(retry_s=30, sleep=sleep)

    assert broker.end_reads == 3
    assert slept == [0.2, 0.4]  # backoff between the attempts, never a busy loop
    assert view.first is not None
    assert view.first.published == {REMINDERS: 12, INVOICES: 0, DLQ: 3}

    # The worker publishes: 4 + 3 reminders, 2 dead letters; the group's coordinator is up.
    broker.ends[TopicPartition(REMINDERS, 0)] = 9
    broker.ends[TopicPartition(REMINDERS, 1)] = 10
    broker.ends[TopicPartition(DLQ, 0)] = 5
    broker.coordinator = True
    snap = Snapshot(at=0.0)
    snap.published = await view._published()
    await view._read_group(snap)

    assert view._since_start(REMINDERS, snap) == "7"
    assert view._since_start(INVOICES, snap) == "0"
    assert view._since_start(DLQ, snap) == "2"
    assert (snap.consumed, snap.lag) == (40, 2)


async def test_a_baseline_that_never_answers_gives_up_after_its_bound() -> None:
    class Down:
        async def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
            raise LeaderNotAvailableError()

        async def committed_and_end(self, group: str, topics: list[str]) -> Any:
            raise GroupCoordinatorNotAvailableError()

    view = _view(Down())
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await view.baseline(retry_s=0.0, sleep=sleep)

    assert slept == []
    assert view.first is not None
    assert view.first.published == {}
    assert view.first.error == (
        "broker: LeaderNotAvailableError, broker: GroupCoordinatorNotAvailableError"
    )
    assert view._since_start(REMINDERS, Snapshot(at=0.0, published={REMINDERS: 3})) == "–"
