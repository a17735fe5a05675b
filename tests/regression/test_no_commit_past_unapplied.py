"""No offset commit passes an input record that is neither applied nor dead-lettered.

A chaos run once ended with 28 consecutive usage records of one partition in neither place
while the group's committed offset had moved past them. Each way a commit could pass
unapplied records is driven here against the real broker and database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    produce,
    usage,
    wait_applied,
)
from tests.waiting import wait_until
from worker.adapters.kafka_admin import committed_and_end
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.postgres import PgStore
from worker.builders import create_pool, decoder_from, encoder_from, policy_from
from worker.config import Settings
from worker.entrypoints import stream
from worker.entrypoints.stream import StreamProcessor
from worker.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ACCOUNTS = 12
USAGE_PER_ACCOUNT = 25


class GatedStore(PgStore):
    """PgStore whose units of work wait at a gate once it is closed (a batch in the database
    for as long as the test wants)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[Any]:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        async with super().unit_of_work() as uow:
            yield uow


def _processor(settings: Settings, store: PgStore) -> StreamProcessor:
    return StreamProcessor(
        settings,
        store,
        decoder_from(settings),
        encoder_from(settings),
        policy_from(settings),
        Metrics(),
    )


async def _produce_scenario(settings: Settings, unique: str) -> list[str]:
    """Accounts opened, then usage for each; returns every event id."""
    accounts = [f"acc-{unique}-{n}" for n in range(ACCOUNTS)]
    opens = [opened(f"o-{a}", a, ago(hours=2), test_credits=10_000) for a in accounts]
    uses = [
        usage(f"u-{a}-{k}", a, ago(hours=1, seconds=-k))
        for k in range(USAGE_PER_ACCOUNT)
        for a in accounts
    ]
    await produce(settings, settings.topic_account_events, opens)
    await produce(settings, settings.topic_usage, uses)
    return [e["event_id"] for e in opens + uses]


async def _group_at_end(settings: Settings) -> bool:
    offsets = await committed_and_end(
        kafka_client_args(settings),
        settings.consumer_group,
        [settings.topic_usage, settings.topic_account_events],
    )
    return all(committed == end for committed, end in offsets.values())


async def test_a_rebalance_with_a_batch_in_the_database_and_records_buffered_loses_nothing(
    settings: Settings, unique: str
) -> None:
    # Small batches: records wait in the aligner and in the fetch read ahead while a batch is
    # in the database; a second member joins then, and later the first one leaves.
    settings = settings.model_copy(update={"batch_max_records": 20, "input_partitions": 3})
    await create_topics(settings)
    event_ids = await _produce_scenario(settings, unique)
    pool = await create_pool(settings, size=4)
    first_store, second_store = GatedStore(pool), GatedStore(pool)
    first, second = _processor(settings, first_store), _processor(settings, second_store)
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    try:
        async with database(settings) as conn:
            first_task = asyncio.create_task(first.run(first_stop))
            await wait_until(
                lambda: conn.fetchval("SELECT count(*) > 0 FROM applied_events"),
                30,
                "the first batches to be applied",
            )
            first_store.gate.clear()
            await asyncio.wait_for(first_store.waiting.wait(), 30)
            # A batch is in the database, the next fetch is read ahead: a member joins.
            second_task = asyncio.create_task(second.run(second_stop))
            await wait_until(lambda: first.listener.rebalancing, 30, "the rebalance to start")
            first_store.gate.set()
            await wait_until(
                lambda: bool(second.consumer and second.consumer.assignment()),
                30,
                "the second member's assignment",
            )
            first_stop.set()  # and the first one leaves: a second rebalance
            await asyncio.wait_for(first_task, 60)
            await wait_applied(conn, event_ids, 60)

            async def at_end() -> bool:
                return await _group_at_end(settings)

            await wait_until(at_end, 60, "the group to commit to the end")
            second_stop.set()
            await asyncio.wait_for(second_task, 60)
            applied = await conn.fetchval(
                "SELECT count(*) FROM applied_events WHERE event_id = ANY($1::text[])",
                event_ids,
            )
            assert applied == ACCOUNTS * (USAGE_PER_ACCOUNT + 1)
    finally:
        first_store.gate.set()
        first_stop.set()
        second_stop.set()
        # No relay runs here: the session database's outbox must not hand this test's rows to
        # the next test's relay (its topics are deleted, so it would spend its shutdown on them).
        await pool.execute(
            "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL AND topic LIKE $1",
            f"test-{unique}.%",
        )
        await pool.close()


async def _subscribed(settings: Settings, processor: StreamProcessor) -> AIOKafkaConsumer:
    consumer = processor.build_consumer()
    await consumer.start()
    consumer.subscribe(
        [settings.topic_usage, settings.topic_account_events], listener=processor.listener
    )
    return consumer


async def test_records_read_and_never_handed_on_are_read_again_not_committed_past(
    settings: Settings, unique: str
) -> None:
    # The shape of the loss: a fetch's records are dropped while the partition stays assigned
    # (its position past them); the next fetch's position must not become a settled commit.
    settings = settings.model_copy(update={"input_partitions": 1, "batch_max_records": 5})
    await create_topics(settings)
    await _produce_scenario(settings, unique)
    pool = await create_pool(settings, size=2)
    processor = _processor(settings, PgStore(pool))
    consumer = await _subscribed(settings, processor)
    usage_tp = TopicPartition(settings.topic_usage, 0)
    try:
        processor._accept(consumer, await processor._fetch(consumer))  # the first assignment
        dropped = await processor._fetch(consumer)
        while not any(d.record.source == "usage" for d in dropped.decoded):
            processor._accept(consumer, dropped)
            dropped = await processor._fetch(consumer)
        first_dropped = min(d.record.offset for d in dropped.decoded if d.record.source == "usage")
        # `dropped` never reaches the aligner. The next fetch is handed on as usual.
        processor._accept(consumer, await processor._fetch(consumer))

        settled = processor._with_settled({})
        assert settled.get(usage_tp, 0) <= first_dropped
        assert await consumer.position(usage_tp) == first_dropped  # sought back
        read_again: set[int] = set()
        for _ in range(50):
            again = await processor._fetch(consumer)
            read_again |= {d.record.offset for d in again.decoded if d.record.source == "usage"}
            if read_again:
                break
        assert min(read_again) == first_dropped
    finally:
        await consumer.stop()
        await pool.close()


async def test_a_partition_revoked_while_its_position_is_asked_makes_the_fetch_stale(
    settings: Settings, unique: str
) -> None:
    settings = settings.model_copy(update={"input_partitions": 2})
    await create_topics(settings)
    processor = _processor(settings, PgStore(None))  # type: ignore[arg-type]
    consumer = processor.build_consumer()
    await consumer.start()
    kept = TopicPartition(settings.topic_usage, 0)
    revoked = TopicPartition(settings.topic_usage, 1)
    consumer.assign([kept, revoked])
    real_position = consumer.position

    async def position_then_revoke(tp: TopicPartition) -> int:
        if tp == revoked:
            consumer.assign([kept])  # a rebalance takes the partition while it is asked
        return int(await real_position(tp))

    consumer.position = position_then_revoke  # type: ignore[method-assign]
    try:
        fetched = await processor._fetch(consumer)
        assert fetched.generation != processor.listener.generation  # never handed on
        assert await processor._other_sides(consumer) == (set(), frozenset())
    finally:
        await consumer.stop()


class _Recorder:
    """Stands in for the stream's logger: keeps every call."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


async def test_every_offset_commit_is_traced_with_partition_offset_generation_and_batch(
    settings: Settings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"input_partitions": 1})
    await create_topics(settings)
    await _produce_scenario(settings, unique)
    processor = _processor(settings, PgStore(None))  # type: ignore[arg-type]
    consumer = await _subscribed(settings, processor)
    recorder = _Recorder()
    monkeypatch.setattr(stream, "log", recorder)
    usage_tp = TopicPartition(settings.topic_usage, 0)
    key = f"{settings.topic_usage}:0"
    try:
        await processor._fetch(consumer)  # joins the group
        await processor._commit(consumer, {usage_tp: 7}, asyncio.Event(), 7, {key: [0, 6]})
    finally:
        await consumer.stop()
    assert ("debug", "offsets_committed") in {(level, event) for level, event, _ in recorder.lines}
    [fields] = [f for _, event, f in recorder.lines if event == "offsets_committed"]
    assert fields == {
        "offsets": {key: 7},
        "generation": processor.listener.generation,
        "batch": 7,
        "released": {key: [0, 6]},
    }


async def test_an_empty_fetch_that_times_out_during_a_rebalance_is_not_taken_for_current(
    settings: Settings, unique: str
) -> None:
    # The loss of the chaos run. A batch is in the database (the lock is held); a member
    # joins; the revocation bumps the generation and waits for the lock. The fetch read ahead
    # meanwhile times out empty (aiokafka returns {} on timeout without asking whether a
    # reassignment is under way) and reads its positions from the old assignment, past the
    # records buffered in the aligner. The revocation then drops those records; the fetch
    # matched the new generation, so its positions became settled commits past them.
    settings = settings.model_copy(update={"input_partitions": 1, "batch_timeout_ms": 8_000})
    await create_topics(settings)
    await _produce_scenario(settings, unique)
    pool = await create_pool(settings, size=2)
    processor = _processor(settings, PgStore(pool))
    consumer = await _subscribed(settings, processor)
    usage_tp = TopicPartition(settings.topic_usage, 0)
    other = AIOKafkaConsumer(
        **kafka_client_args(settings),
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    try:
        # Everything read and buffered, nothing applied (the records wait as a batch would).
        end = USAGE_PER_ACCOUNT * ACCOUNTS
        while processor.aligner.fetched_through.get(("usage", 0), 0) < end:
            fetched = await processor._fetch(consumer)
            assert processor._current(fetched)
            processor._accept(consumer, fetched)
        first_buffered = processor.aligner.buffers[("usage", 0)][0].record.offset

        async with processor.lock:  # a batch in the database
            ahead = asyncio.create_task(processor._fetch(consumer))
            await other.start()
            other.subscribe([settings.topic_usage, settings.topic_account_events])
            await wait_until(lambda: processor.listener.rebalancing, 30, "the revocation")
            fetched = await asyncio.wait_for(ahead, 30)  # timed out, empty
        await wait_until(lambda: not processor.listener.rebalancing, 30, "the new assignment")

        assert fetched.decoded == []
        assert not processor._current(fetched)
        if processor._current(fetched):  # what the loop did with it
            processor._accept(consumer, fetched)
        settled = processor._with_settled({})
        assert settled.get(usage_tp, 0) <= first_buffered
    finally:
        await other.stop()
        await consumer.stop()
        await pool.close()


async def test_a_fetch_not_handed_on_is_read_again_from_its_first_record_never_skipped(
    settings: Settings, unique: str
) -> None:
    settings = settings.model_copy(update={"input_partitions": 1, "batch_max_records": 7})
    await create_topics(settings)
    await _produce_scenario(settings, unique)
    processor = _processor(settings, PgStore(None))  # type: ignore[arg-type]
    consumer = await _subscribed(settings, processor)
    usage_tp = TopicPartition(settings.topic_usage, 0)
    try:
        processor._accept(consumer, await processor._fetch(consumer))
        fetched = await processor._fetch(consumer)
        # A fetch with usage records past the first one (so that a position before it exists).
        while not any(d.record.source == "usage" for d in fetched.decoded) or any(
            d.record.source == "usage" and d.record.offset == 0 for d in fetched.decoded
        ):
            processor._accept(consumer, fetched)
            fetched = await processor._fetch(consumer)
        first = min(d.record.offset for d in fetched.decoded if d.record.source == "usage")

        await processor._read_again(consumer, fetched)
        assert await consumer.position(usage_tp) == first

        consumer.seek(usage_tp, first - 1)  # already before it: a seek back never goes forward
        await processor._read_again(consumer, fetched)
        assert await consumer.position(usage_tp) == first - 1
    finally:
        await consumer.stop()
