"""What the relay does with what nobody scripted: a message the broker refuses for good, and an
output log that the database does not account for (restored from a backup, or another one)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.kit import create_topics, run_cli
from tests.waiting import wait_until
from worker.adapters import parked
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, database_url_for, drop_database
from worker.adapters.observe import outbox_backlog
from worker.adapters.relay import OutboxRelay
from worker.builders import relay_from
from worker.config import Settings
from worker.entrypoints.failures import classify
from worker.entrypoints.outbox import adopt_log
from worker.errors import OutputLogMismatch
from worker.metrics import Metrics

pytestmark = pytest.mark.integration

LIMIT_BYTES = 10_000  # the small topic's max.message.bytes
BIG = b"x" * 20_000  # refused by it, accepted once the limit is raised


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


@pytest.fixture
async def admin_url(service_env: dict[str, str]) -> str:
    return service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")


@pytest.fixture
async def own_db(admin_url: str) -> AsyncIterator[str]:
    """A database of its own: the outbox holds only this test's rows."""
    name = f"billing_refuse_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin_url, name)
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


@pytest.fixture
async def small_topic(settings: Settings) -> AsyncIterator[str]:
    """One partition whose broker limit the big message exceeds."""
    name = f"{settings.topic_reminders}.small"
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()
    try:
        config = {"max.message.bytes": str(LIMIT_BYTES)}
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


@pytest.fixture
async def compacted_topic(settings: Settings) -> AsyncIterator[str]:
    """One compacted partition, as the balance feed is: the broker refuses a message without
    a key there (INVALID_RECORD)."""
    name = f"{settings.topic_balances}.compacted"
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()
    try:
        config = {"cleanup.policy": "compact"}
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


def _relay(settings: Settings, url: str) -> OutboxRelay:
    return OutboxRelay(url, kafka_client_args(settings), settings.client_id, Metrics())


async def _insert(conn: asyncpg.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    """(message_id, topic, payload) rows, keyed by one account so they share a partition."""
    await conn.executemany(
        "INSERT INTO outbox (message_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
        [(m, topic, b"acct-1", payload) for m, topic, payload in rows],
    )


async def _read(settings: Settings, topic: str) -> list[tuple[str, int, str | None]]:
    """(message_id, outbox_seq, outbox_db) of every committed message, in partition order."""
    consumer = AIOKafkaConsumer(
        **kafka_client_args(settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=1 << 20,
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    # A second consumer reads: on aiokafka 0.14 end_offsets() can leave the first fetching nothing.
    consumer = AIOKafkaConsumer(
        **kafka_client_args(settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=1 << 20,
    )
    await consumer.start()
    out: list[tuple[str, int, str | None]] = []
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)

        async def at_end() -> bool:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    h = dict(m.headers)
                    stamp = h.get("outbox_db")
                    out.append(
                        (
                            h["message_id"].decode(),
                            int(h["outbox_seq"]),
                            None if stamp is None else stamp.decode(),
                        )
                    )
            return all([await consumer.position(tp) >= ends[tp] for tp in tps])

        await wait_until(at_end, 30, f"reading {topic} to its end")
        return out
    finally:
        await consumer.stop()


async def test_a_message_too_large_for_its_topic_is_parked_and_the_rest_flows(
    settings: Settings, own_db: str, small_topic: str
) -> None:
    await create_topics(settings)
    other = settings.topic_reminders
    conn = await asyncpg.connect(own_db)
    try:
        await _insert(
            conn,
            [
                ("a0", small_topic, b"{}"),
                ("o0", other, b"{}"),
                ("big", small_topic, BIG),
                ("a1", small_topic, b"{}"),
                ("o1", other, b"{}"),
            ],
        )
        relay = _relay(settings, own_db)

        assert await relay.publish_pending()

        row = await conn.fetchrow("SELECT * FROM outbox WHERE message_id = 'big'")
        assert row["sent_at"] is None
        assert row["relay_seq"] is None
        assert row["failed_at"] is not None
        assert row["failure"].startswith("MessageSizeTooLargeError: ")
        assert "(key and value 20006 bytes)" in row["failure"]
        unsent = await conn.fetch("SELECT message_id FROM outbox WHERE sent_at IS NULL")
        assert [r["message_id"] for r in unsent] == ["big"]
        assert await outbox_backlog(conn) == (0, 0.0, 1)
        assert relay.metrics.outbox_parked.labels(small_topic)._value.get() == 1
    finally:
        await conn.close()
    small = await _read(settings, small_topic)
    assert [m for m, _, _ in small] == ["a0", "a1"]  # each once, in order, without the big one
    assert [m for m, _, _ in await _read(settings, other)] == ["o0", "o1"]
    assert small[0][1] < small[1][1]


async def test_a_message_without_a_key_on_a_compacted_topic_is_parked_and_the_rest_flows(
    settings: Settings, own_db: str, compacted_topic: str
) -> None:
    await create_topics(settings)
    other = settings.topic_reminders
    conn = await asyncpg.connect(own_db)
    try:
        await conn.executemany(
            "INSERT INTO outbox (message_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
            [
                ("b0", compacted_topic, b"acct-1", b"{}"),
                ("o0", other, b"acct-1", b"{}"),
                ("nokey", compacted_topic, None, b"{}"),
                ("b1", compacted_topic, b"acct-1", b"{}"),
                ("o1", other, b"acct-1", b"{}"),
            ],
        )
        relay = _relay(settings, own_db)

        assert await relay.publish_pending()

        row = await conn.fetchrow("SELECT * FROM outbox WHERE message_id = 'nokey'")
        assert row["sent_at"] is None
        assert row["relay_seq"] is None
        assert row["failed_at"] is not None
        assert row["failure"].startswith("InvalidRecordError: The broker refused a record")
        assert row["failure"].endswith("(key and value 2 bytes)")
        unsent = await conn.fetch("SELECT message_id FROM outbox WHERE sent_at IS NULL")
        assert [r["message_id"] for r in unsent] == ["nokey"]
        assert relay.metrics.outbox_parked.labels(compacted_topic)._value.get() == 1
    finally:
        await conn.close()
    assert [m for m, _, _ in await _read(settings, compacted_topic)] == ["b0", "b1"]
    assert [m for m, _, _ in await _read(settings, other)] == ["o0", "o1"]


async def test_a_parked_row_released_gets_a_new_number_and_a_crash_never_marks_it_sent(
    settings: Settings, own_db: str, small_topic: str
) -> None:
    # The round that skips the parked row commits, then the process dies before marking its
    # rows: recovery marks every row up to the log's highest number, which must not include
    # the parked row (it gave its number up when parked).
    class DiesAfterCommit(OutboxRelay):
        async def _start(self, conn: asyncpg.Connection) -> Any:
            producer = await super()._start(conn)
            commit = producer.commit_transaction

            async def commit_then_die() -> None:
                await commit()
                raise Crash

            producer.commit_transaction = commit_then_die  # type: ignore[method-assign]
            return producer

    conn = await asyncpg.connect(own_db)
    try:
        await _insert(
            conn,
            [("a0", small_topic, b"{}"), ("big", small_topic, BIG), ("a1", small_topic, b"{}")],
        )
        dying = DiesAfterCommit(own_db, kafka_client_args(settings), settings.client_id, Metrics())
        with pytest.raises(Crash):
            await dying.publish_pending()
        rows = await conn.fetch(
            "SELECT message_id, sent_at IS NOT NULL AS sent, failed_at IS NOT NULL AS parked,"
            " relay_seq FROM outbox ORDER BY id"
        )
        assert [(r["message_id"], r["sent"], r["parked"]) for r in rows] == [
            ("a0", False, False),
            ("big", False, True),
            ("a1", False, False),
        ]
        assert rows[1]["relay_seq"] is None

        assert await _relay(settings, own_db).publish_pending()  # recovers, publishes nothing
        sent = await conn.fetch("SELECT message_id FROM outbox WHERE sent_at IS NOT NULL")
        assert sorted(r["message_id"] for r in sent) == ["a0", "a1"]

        await _raise_limit(settings, small_topic)
        released = await parked.release(conn, None, set())
        assert released.released == ["big"]
        assert await _relay(settings, own_db).publish_pending()
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await conn.close()
    seen = await _read(settings, small_topic)
    assert [m for m, _, _ in seen] == ["a0", "a1", "big"]  # each exactly once
    assert seen[2][1] > seen[1][1]  # the released row's new number is above the log's


async def _raise_limit(settings: Settings, topic: str) -> None:
    """Raise the topic's limit above the big message, and wait until the broker says so."""
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "100000"})
        await admin.alter_configs([resource])

        async def raised() -> bool:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            entries = described[0].resources[0][4]
            return any(e[0] == "max.message.bytes" and e[1] == "100000" for e in entries)

        await wait_until(raised, 30, "the topic's new limit")
    finally:
        await admin.close()


async def test_the_cli_lists_parked_rows_and_releases_them(
    settings: Settings, own_db: str, small_topic: str
) -> None:
    conn = await asyncpg.connect(own_db)
    try:
        await _insert(conn, [("big", small_topic, BIG), ("a0", small_topic, b"{}")])
        assert await _relay(settings, own_db).publish_pending()
        big_id = await conn.fetchval("SELECT id FROM outbox WHERE message_id = 'big'")
    finally:
        await conn.close()
    mine = settings.model_copy(update={"database_url": own_db})

    code, out, _ = await run_cli(mine, "outbox", "parked", "--json")
    assert code == 0
    listed = orjson.loads(out)
    assert [(r["id"], r["message_id"], r["topic"], r["size"]) for r in listed] == [
        (big_id, "big", small_topic, 20006)
    ]
    assert listed[0]["failure"].startswith("MessageSizeTooLargeError")

    code, _, err = await run_cli(mine, "outbox", "release", str(big_id + 1000))
    assert code == 2
    assert "not parked" in err

    code, out, _ = await run_cli(mine, "outbox", "release", str(big_id))
    assert code == 0
    assert out.strip() == "released 1 big"
    code, out, _ = await run_cli(mine, "outbox", "parked")
    assert code == 0
    assert out.strip() == "parked: 0"


async def test_releasing_a_balance_snapshot_a_newer_one_superseded_does_not_send_it(
    own_db: str,
) -> None:
    conn = await asyncpg.connect(own_db)
    try:
        await _insert(
            conn, [("acct-1:balance:1", "balances", b"{}"), ("acct-1:balance:2", "balances", b"{}")]
        )
        await conn.execute(
            "UPDATE outbox SET failed_at = now(), failure = 'refused'"
            " WHERE message_id = 'acct-1:balance:1'"
        )
        done = await parked.release(conn, None, {"balances"})
        assert done.released == []
        assert done.superseded == [("acct-1:balance:1", "acct-1:balance:2")]
        row = await conn.fetchrow("SELECT * FROM outbox WHERE message_id = 'acct-1:balance:1'")
        assert row["sent_at"] is not None  # closed: listed as parked no more
        assert row["failure"] == "refused; not sent when released: superseded by acct-1:balance:2"
        assert await parked.parked_rows(conn) == []
    finally:
        await conn.close()


async def _copy_database(admin_url: str, source_url: str) -> tuple[str, str]:
    """A copy of the database at `source_url` as it is now (what a backup restores)."""
    name = f"billing_restored_{uuid.uuid4().hex[:10]}"
    source = source_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    finally:
        await admin.close()
    return name, database_url_for(admin_url, name)


async def test_a_database_restored_from_an_older_backup_refuses_to_trust_the_log(
    settings: Settings, own_db: str, admin_url: str
) -> None:
    await create_topics(settings)
    topic = settings.topic_reminders
    original = settings.model_copy(update={"database_url": own_db})
    # The backup: taken before the original published anything.
    name, restored_url = await _copy_database(admin_url, own_db)
    restored = settings.model_copy(update={"database_url": restored_url})
    try:
        conn = await asyncpg.connect(own_db)
        try:
            await _insert(conn, [("r0", topic, b"{}"), ("r1", topic, b"{}"), ("r2", topic, b"{}")])
        finally:
            await conn.close()
        assert await relay_from(original, Metrics()).publish_pending()

        conn = await asyncpg.connect(restored_url)
        try:
            # Work applied again after the restore: numbered 1 and 2 by this database, they
            # would be taken for published (the log holds 3) by the next recovery.
            await _insert(conn, [("s0", topic, b"{}"), ("s1", topic, b"{}")])
            with pytest.raises(OutputLogMismatch) as refused:
                await relay_from(restored, Metrics()).publish_pending()
            message = str(refused.value)
            assert "the output topics hold outbox_seq 3" in message
            assert "numbered only up to 0" in message
            assert "restored from a backup" in message
            assert "billing-worker outbox adopt-log" in message
            assert classify(refused.value).exit_code == 6
            # The worker itself stops on it, with one line and exit 6.
            code, _, err = await run_cli(restored, "run")
            assert code == 6
            failed = [orjson.loads(line) for line in err.splitlines() if "command_failed" in line]
            assert len(failed) == 1
            assert failed[0]["error_code"] == "output_log_mismatch"
            assert failed[0]["message"] == message
            rows = await conn.fetch("SELECT sent_at, relay_seq FROM outbox")
            assert [(r["sent_at"], r["relay_seq"]) for r in rows] == [(None, None), (None, None)]

            # The way out: number on after the log.
            said = await adopt_log(restored)
            assert said.startswith("numbering continues after outbox_seq 3")
            assert await relay_from(restored, Metrics()).publish_pending()
            seqs = await conn.fetch("SELECT message_id, relay_seq FROM outbox ORDER BY id")
            assert [(r["message_id"], r["relay_seq"]) for r in seqs] == [("s0", 4), ("s1", 5)]
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, name)
    seen = await _read(settings, topic)
    assert sorted((m, s) for m, s, _ in seen) == [
        ("r0", 1),
        ("r1", 2),
        ("r2", 3),
        ("s0", 4),
        ("s1", 5),
    ]
    assert len({stamp for _, _, stamp in seen}) == 1  # a restore keeps the database's stamp


async def test_another_database_pointed_at_the_same_topics_is_refused(
    settings: Settings, own_db: str, admin_url: str
) -> None:
    await create_topics(settings)
    topic = settings.topic_invoices
    conn = await asyncpg.connect(own_db)
    try:
        await _insert(conn, [("i0", topic, b"{}")])
    finally:
        await conn.close()
    assert await relay_from(
        settings.model_copy(update={"database_url": own_db}), Metrics()
    ).publish_pending()
    name = f"billing_other_{uuid.uuid4().hex[:10]}"
    other_url = await create_database(admin_url, name)
    try:
        conn = await asyncpg.connect(other_url)
        try:
            # Its own sequence is far ahead: only the stamp tells the log is not its own.
            await conn.execute("SELECT setval('outbox_relay_seq', 1000)")
            await conn.execute(
                "INSERT INTO outbox (message_id, topic, key, payload, relay_seq)"
                " VALUES ('x0', $1, 'k', '{}', 1)",
                topic,
            )
            other = settings.model_copy(update={"database_url": other_url})
            with pytest.raises(OutputLogMismatch) as refused:
                await relay_from(other, Metrics()).publish_pending()
            assert "published from another database" in str(refused.value)
            # Its row numbered 1 is not taken for the other database's message number 1.
            assert await conn.fetchval("SELECT sent_at FROM outbox") is None
            code, _, err = await run_cli(other, "outbox", "adopt-log")
            assert code == 6
            assert "another database" in err
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, name)
