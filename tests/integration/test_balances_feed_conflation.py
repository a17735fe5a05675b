"""Balance snapshots superseded before the relay numbered them are never published (ADR 0003)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.kit import (
    ago,
    create_topics,
    opened,
    produce,
    purchased,
    reminder_set,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, drop_database
from worker.adapters.postgres import write_outbox
from worker.adapters.relay import RELAY_LOCK_KEY, OutboxRelay
from worker.config import Settings
from worker.metrics import Metrics
from worker.service.ports import OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
async def own_db(service_env: dict[str, str]) -> AsyncIterator[str]:
    """A database of its own: the relay lock and the outbox are this test's alone."""
    admin = service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")
    name = f"billing_conflate_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name)
    try:
        yield url
    finally:
        await drop_database(admin, name)


Message = tuple[bytes | None, dict[str, str], bytes]


async def read_all(settings: Settings, topic: str) -> list[Message]:
    """(key, headers, value) of every committed message of `topic`, in offset order per
    partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        out: list[Message] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end in 30 s"
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(
                    (m.key, {k: v.decode() for k, v in m.headers}, m.value or b"") for m in msgs
                )
        return out
    finally:
        await consumer.stop()


def _relay(settings: Settings, url: str) -> OutboxRelay:
    return OutboxRelay(url, kafka_client_args(settings), settings.client_id, Metrics())


def snapshot(settings: Settings, account: str, version: int) -> OutboxMessage:
    """A balance snapshot as the encoder writes it: it replaces the one of the version before."""
    return OutboxMessage(
        f"{account}:balance:{version}",
        settings.topic_balances,
        account.encode(),
        orjson.dumps({"account_id": account, "version": version}),
        conflatable=True,
        replaces=f"{account}:balance:{version - 1}" if version > 1 else None,
    )


async def test_an_account_changed_in_many_batches_before_the_relay_runs_publishes_its_last_state(
    settings: Settings, own_db: str, unique: str
) -> None:
    settings = settings.model_copy(update={"database_url": own_db})
    account = f"busy-{unique}"
    await create_topics(settings)
    # Holding the relay's lock keeps the worker's relay from publishing: a backlog builds up.
    holder = await asyncpg.connect(own_db)
    assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY)
    conn = await asyncpg.connect(own_db)
    try:
        async with running_worker(settings):
            # One event per batch: each is applied before the next is sent.
            first = [
                (settings.topic_account_events, opened(f"o-{account}", account, ago(days=3), 0)),
                (
                    settings.topic_account_events,
                    purchased(f"p-{account}", account, ago(days=3), 1000),
                ),
                (
                    settings.topic_account_events,
                    reminder_set(f"r-{account}", account, ago(days=3), threshold=500),
                ),
            ]
            # Not a multiple of JPY 1,000: dead-lettered, keyed by the account like a snapshot.
            bad = purchased(f"bad-{account}", account, ago(days=2), 1500)
            uses = [
                (settings.topic_usage, usage(f"u{n}-{account}", account, ago(hours=10 - n), 10))
                for n in range(8)
            ]
            batches = [*first, *uses[:4], (settings.topic_account_events, bad), *uses[4:]]
            for topic, event in batches:
                await produce(settings, topic, [event])
                if event is bad:
                    await wait_until(
                        lambda: _dead_lettered(conn, settings), 30, "the bad purchase's dead letter"
                    )
                else:
                    await wait_applied(conn, [event["event_id"]])
            rows = await conn.fetch(
                "SELECT topic, message_id FROM outbox WHERE key = $1 ORDER BY id", account.encode()
            )
            # 11 changes (3 account events, 8 charges), each its own batch: one snapshot left.
            assert [r["message_id"] for r in rows if r["topic"] == settings.topic_balances] == [
                f"{account}:balance:11"
            ]
            assert [r["topic"] for r in rows].count(settings.topic_reminders) == 1
            assert [r["topic"] for r in rows].count(settings.topic_dlq) == 1

            await holder.close()  # the relay may lead now

            async def drained() -> bool:
                unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                return bool(unsent == 0)

            await wait_until(drained, 60, "the backlog to be published")
    finally:
        await conn.close()
        if not holder.is_closed():
            await holder.close()

    feed = [(k, orjson.loads(v)) for k, _, v in await read_all(settings, settings.topic_balances)]
    mine = [value for key, value in feed if key == account.encode()]
    assert len(mine) == 1 < len(batches)
    # Hand-computed: JPY 1,000 bought, 8 × 10 segments at JPY 10 charged; threshold 500.
    state = {k: mine[0][k] for k in ("balance", "overdraft", "credit", "status", "version")}
    assert state == {"balance": 200, "overdraft": 0, "credit": 200, "status": "low", "version": 11}
    reminders = [orjson.loads(v) for _, _, v in await read_all(settings, settings.topic_reminders)]
    assert [(r["account_id"], r["kind"], r["balance"]) for r in reminders] == [
        (account, "low_balance", 500)
    ]
    dead = [orjson.loads(v) for _, _, v in await read_all(settings, settings.topic_dlq)]
    assert len(dead) == 1


async def _dead_lettered(conn: asyncpg.Connection, settings: Settings) -> bool:
    n = await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", settings.topic_dlq)
    return bool(n == 1)


async def test_only_unnumbered_unparked_snapshots_are_conflated(
    settings: Settings, own_db: str
) -> None:
    """Reminders, dead letters, invoices with the same key, a numbered snapshot, a parked one
    and a row not written as a snapshot all stay; only replaced unnumbered snapshots go."""
    conn = await asyncpg.connect(own_db)
    try:
        key = b"acct-1"

        def other(topic: str, message_id: str) -> OutboxMessage:
            return OutboxMessage(message_id, topic, key, b"{}")

        await write_outbox(
            conn,
            [
                other(settings.topic_reminders, "acct-1:low_balance:e1"),
                other(settings.topic_dlq, "dlq:t:0:1"),
                other(settings.topic_invoices, "INV-2026-11-acct-1"),
                snapshot(settings, "acct-1", 1),
                snapshot(settings, "acct-2", 1),
            ],
        )
        await write_outbox(conn, [snapshot(settings, "acct-1", 2)])
        await write_outbox(conn, [snapshot(settings, "acct-1", 3)])
        # v3 numbered by a relay round in flight, then v4 parked by the broker's refusal.
        await conn.execute("UPDATE outbox SET relay_seq = 7 WHERE message_id = 'acct-1:balance:3'")
        await write_outbox(conn, [snapshot(settings, "acct-1", 4)])
        await conn.execute(
            "UPDATE outbox SET failed_at = now(), failure = 'refused'"
            " WHERE message_id = 'acct-1:balance:4'"
        )
        await write_outbox(conn, [snapshot(settings, "acct-1", 5)])
        # A row not written as a snapshot is never deleted, even under a replaced id.
        await write_outbox(conn, [other(settings.topic_balances, "acct-3:balance:1")])
        await write_outbox(conn, [snapshot(settings, "acct-3", 2)])

        left = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM outbox")}
    finally:
        await conn.close()
    assert left == {
        "acct-1:low_balance:e1",
        "dlq:t:0:1",
        "INV-2026-11-acct-1",
        "acct-2:balance:1",
        "acct-1:balance:3",  # numbered: it may be in the log already
        "acct-1:balance:4",  # parked: ops decide
        "acct-1:balance:5",
        "acct-3:balance:1",
        "acct-3:balance:2",
    }


async def test_a_row_deleted_after_the_relay_read_its_page_is_not_published(
    settings: Settings, own_db: str
) -> None:
    """The relay reads a page, a batch conflates a row of it (committing while the relay's
    numbering waits for it), and the relay publishes the rest, then the newer snapshot: the
    topic never holds an older version after a newer one."""
    await create_topics(settings)
    relay = _relay(settings, own_db)
    conn = await asyncpg.connect(own_db)
    batch = await asyncpg.connect(own_db)
    watcher = await asyncpg.connect(own_db)
    try:
        await write_outbox(conn, [snapshot(settings, "a", 1), snapshot(settings, "b", 1)])
        producer = await relay._start(conn)
        number = relay._number
        raced: list[str] = []

        async def number_while_a_batch_conflates(
            c: asyncpg.Connection, rows: list[asyncpg.Record]
        ) -> Any:
            assert [r["message_id"] for r in rows] == ["a:balance:1", "b:balance:1"]
            # The batch deletes a:1 and writes a:2 in a transaction still open while the
            # relay numbers the page: its UPDATE waits for the row, then does not find it.
            tx = batch.transaction()
            await tx.start()
            await write_outbox(batch, [snapshot(settings, "a", 2)])
            numbering = asyncio.create_task(number(c, rows))
            await wait_until(lambda: _waiting_for_a_lock(watcher), 10, "the numbering to wait")
            assert not numbering.done()
            await tx.commit()
            live, seqs = await numbering
            raced.extend(r["message_id"] for r in live)
            return live, seqs

        relay._number = number_while_a_batch_conflates  # type: ignore[method-assign]
        try:
            await relay.relay_once(conn, producer)
        finally:
            relay._number = number  # type: ignore[method-assign]
        assert raced == ["b:balance:1"]
        await relay.relay_once(conn, producer)
        await producer.stop()
        unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        assert unsent == 0
    finally:
        await watcher.close()
        await batch.close()
        await conn.close()
    seen = [
        (key, h["message_id"], int(h["outbox_seq"]))
        for key, h, _ in await read_all(settings, settings.topic_balances)
    ]
    # a:1 went nowhere: nothing older follows a newer version of any key.
    assert sorted(m for _, m, _ in seen) == ["a:balance:2", "b:balance:1"]


async def _waiting_for_a_lock(conn: asyncpg.Connection) -> bool:
    """Some session of this database waits for a row lock."""
    n = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    return bool(n >= 1)


async def test_a_row_numbered_before_the_batch_is_published_then_the_newer_one(
    settings: Settings, own_db: str
) -> None:
    """The relay numbers a page, a batch writes a newer snapshot of one of its rows (the
    numbered row is kept), and the topic holds both in version order."""
    await create_topics(settings)
    relay = _relay(settings, own_db)
    conn = await asyncpg.connect(own_db)
    try:
        await write_outbox(conn, [snapshot(settings, "a", 1)])
        producer = await relay._start(conn)
        number = relay._number

        async def number_then_a_batch(c: asyncpg.Connection, rows: list[asyncpg.Record]) -> Any:
            done = await number(c, rows)
            other = await asyncpg.connect(own_db)
            try:
                async with other.transaction():
                    await write_outbox(other, [snapshot(settings, "a", 2)])
            finally:
                await other.close()
            return done

        relay._number = number_then_a_batch  # type: ignore[method-assign]
        try:
            await relay.relay_once(conn, producer)
        finally:
            relay._number = number  # type: ignore[method-assign]
        await relay.relay_once(conn, producer)
        await producer.stop()
        left = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM outbox")}
        assert left == {"a:balance:1", "a:balance:2"}
    finally:
        await conn.close()
    seen = [h["message_id"] for _, h, _ in await read_all(settings, settings.topic_balances)]
    assert seen == ["a:balance:1", "a:balance:2"]
