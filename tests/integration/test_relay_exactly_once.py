"""The transactional relay: a crash between Kafka commit and outbox update repeats nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ProducerFenced

from tests.integration.kit import create_topics
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, drop_database
from worker.adapters.relay import OutboxRelay, build_transactional_producer, transactional_id
from worker.config import Settings
from worker.metrics import Metrics

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


@pytest.fixture
async def own_db(service_env: dict[str, str]) -> AsyncIterator[str]:
    """A database of its own: the outbox holds only this test's rows."""
    admin = service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")
    name = f"billing_relay_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    try:
        yield url
    finally:
        await drop_database(admin, name)


def _relay(settings: Settings, url: str, batch_size: int = 1000) -> OutboxRelay:
    return OutboxRelay(url, kafka_client_args(settings), settings.client_id, Metrics(), batch_size)


async def _insert(conn: asyncpg.Connection, topic: str, ids: list[str]) -> None:
    await conn.executemany(
        "INSERT INTO outbox (message_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
        [(m, topic, f"acct-{m}".encode(), f'{{"id": "{m}"}}'.encode()) for m in ids],
    )


async def _consumer(settings: Settings, isolation: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka 0.14: lets a background task start before stop()
    return consumer


async def _read(settings: Settings, topic: str, isolation: str) -> list[tuple[str, int]]:
    """(message_id, outbox_seq) of every message of `topic`, as a consumer of `isolation` sees."""
    consumer = await _consumer(settings, isolation)
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    # A second consumer reads: on aiokafka 0.14 end_offsets() can leave the first fetching nothing.
    consumer = await _consumer(settings, isolation)
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: list[tuple[str, int]] = []
        waiting = {tp for tp in tps if ends[tp] > 0}
        for _ in range(200):
            if not waiting:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    headers = dict(m.headers)
                    out.append((headers["message_id"].decode(), int(headers["outbox_seq"])))
            waiting = {tp for tp in waiting if await consumer.position(tp) < ends[tp]}
        assert not waiting, f"could not read {topic} to its end"
        return out
    finally:
        await consumer.stop()


async def _crash_after_commit(relay: OutboxRelay, conn: asyncpg.Connection) -> None:
    """One relay round whose process dies right after the Kafka commit."""
    producer = await relay._start(conn)
    commit = producer.commit_transaction

    async def commit_then_die() -> Any:
        await commit()
        raise Crash

    producer.commit_transaction = commit_then_die  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await relay.relay_once(conn, producer)
    finally:
        await producer.stop()


async def test_a_relay_dying_after_the_commit_does_not_publish_its_rows_again(
    settings: Settings, own_db: str
) -> None:
    await create_topics(settings)
    topic = settings.topic_reminders
    conn = await asyncpg.connect(own_db)
    try:
        await _insert(conn, topic, [f"r{n}" for n in range(5)])
        await _crash_after_commit(_relay(settings, own_db), conn)
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 5
        await _insert(conn, topic, ["r5", "r6"])

        assert await _relay(settings, own_db).publish_pending()

        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await conn.close()
    seen = await _read(settings, topic, "read_committed")
    assert sorted(m for m, _ in seen) == ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]
    assert sorted(s for _, s in seen) == [1, 2, 3, 4, 5, 6, 7]


async def test_a_row_committed_late_with_a_smaller_id_is_still_published(
    settings: Settings, own_db: str
) -> None:
    # Outbox ids are not in commit order: recovery must not take "id below the log's highest"
    # for "published".
    await create_topics(settings)
    topic = settings.topic_invoices
    slow = await asyncpg.connect(own_db)
    conn = await asyncpg.connect(own_db)
    try:
        late = slow.transaction()
        await late.start()
        await _insert(slow, topic, ["late"])  # takes the smaller id, commits last
        await _insert(conn, topic, ["early"])
        await _crash_after_commit(_relay(settings, own_db), conn)
        await late.commit()

        assert await _relay(settings, own_db).publish_pending()

        ids = await conn.fetch("SELECT message_id FROM outbox ORDER BY id")
        assert [r["message_id"] for r in ids] == ["late", "early"]
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await slow.close()
        await conn.close()
    seen = await _read(settings, topic, "read_committed")
    assert sorted(seen) == [("early", 1), ("late", 2)]


async def test_a_second_relay_fences_the_first_which_publishes_nothing_more(
    settings: Settings, own_db: str
) -> None:
    await create_topics(settings)
    topic = settings.topic_dlq
    conn = await asyncpg.connect(own_db)
    try:
        tid = await transactional_id(conn)
        assert tid == await transactional_id(conn)  # stable for the database
        await _insert(conn, topic, ["d0", "d1"])
        zombie = build_transactional_producer(kafka_client_args(settings), "zombie", tid)
        await zombie.start()
        try:
            await zombie.begin_transaction()
            await (await zombie.send(topic, b"zombie", headers=_headers("z", 99)))

            # A relay starting with the database's id aborts the zombie's open transaction.
            assert await _relay(settings, own_db).publish_pending()

            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
        finally:
            await zombie.stop()
    finally:
        await conn.close()
    assert sorted(await _read(settings, topic, "read_committed")) == [("d0", 1), ("d1", 2)]
    uncommitted = await _read(settings, topic, "read_uncommitted")
    assert ("z", 99) in uncommitted  # aborted: only a read_uncommitted consumer sees it


def _headers(message_id: str, seq: int) -> list[tuple[str, bytes]]:
    return [("message_id", message_id.encode()), ("outbox_seq", str(seq).encode())]


async def test_a_fenced_relay_steps_down_and_leads_again_later(
    settings: Settings, own_db: str
) -> None:
    # close-month's publish_pending fences a worker's relay only when that relay holds no
    # lock; a relay that finds itself fenced retries from the start, it does not stop.
    await create_topics(settings)
    conn = await asyncpg.connect(own_db)
    try:
        relay = _relay(settings, own_db)
        producer = await relay._start(conn)
        try:
            other = build_transactional_producer(
                kafka_client_args(settings), "other", await transactional_id(conn)
            )
            await other.start()
            await other.stop()
            await _insert(conn, settings.topic_reminders, ["f0"])
            with pytest.raises(ProducerFenced):
                await relay.relay_once(conn, producer)
        finally:
            await producer.stop()
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
        assert await _relay(settings, own_db).publish_pending()
    finally:
        await conn.close()
    assert await _read(settings, settings.topic_reminders, "read_committed") == [("f0", 1)]


async def test_a_producer_with_another_database_id_does_not_fence(
    settings: Settings, own_db: str, database_url: str
) -> None:
    a = await asyncpg.connect(own_db)
    b = await asyncpg.connect(database_url)
    try:
        assert await transactional_id(a) != await transactional_id(b)
    finally:
        await a.close()
        await b.close()


async def _until(condition: Any, timeout_s: float) -> bool:
    """Poll `condition` (an async callable) until it holds or the time is up."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_commit_by_another_process_wakes_the_leading_relay(
    settings: Settings, own_db: str
) -> None:
    await create_topics(settings)
    # Its poll would come only after ten minutes: the row must be published on the NOTIFY.
    relay = OutboxRelay(
        own_db, kafka_client_args(settings), settings.client_id, Metrics(), poll_interval_s=600
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    conn = await asyncpg.connect(own_db)
    try:

        async def leading() -> bool:
            return relay.leader

        assert await _until(leading, 60), "the relay never took the lead"
        # Written and committed on a connection of its own, as another worker process would:
        # nothing calls relay.wake().
        await _insert(conn, settings.topic_reminders, ["n1"])

        async def sent() -> bool:
            return bool(await conn.fetchval("SELECT sent_at IS NOT NULL FROM outbox"))

        assert await _until(sent, 30), "the relay did not publish the row on the notification"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await conn.close()
