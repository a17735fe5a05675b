"""Hostile records against the real worker, broker and database (issue: nothing outside the
rules changes what is billed): keys, far-future dates, and `dlq replay` ending."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    purchased,
    read_topic,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from tests.regression.test_bad_and_long_input import worker_task
from worker.config import Settings
from worker.entrypoints.dlq import replay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NO_RATE = "+33612345678"  # France: not in the default rate table


async def send(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]], partition: int = 0
) -> None:
    """Raw records, in order, all on one partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def dead_letters(conn: Any, topic: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", topic)
    return [orjson.loads(row["payload"]) for row in rows]


async def test_a_key_with_a_nul_byte_is_dead_lettered_once_and_the_partition_moves_on(
    settings: Settings, unique: str
) -> None:
    # It used to fail the dead letter's text key 965 times, wrapping dead letters, then die.
    account = f"acc-{unique}"
    nul_key = f"acc-{unique}\x00".encode()
    await create_topics(settings)
    async with worker_task(settings) as task, database(settings) as conn:
        await send(
            settings,
            settings.topic_usage,
            [
                (nul_key, b"not json"),
                (account.encode(), orjson.dumps(usage(f"u-{unique}", account, ago(hours=1)))),
            ],
        )
        await wait_applied(conn, [f"u-{unique}"])
        letters = await dead_letters(conn, settings.topic_dlq)
        stored_key = await conn.fetchval(
            "SELECT key FROM outbox WHERE topic = $1", settings.topic_dlq
        )
        assert not task.done()
    [letter] = letters
    assert (letter["error_code"], letter["source_offset"]) == ("malformed_json", 0)
    assert base64.b64decode(letter["key_base64"]) == nul_key
    assert letter["key"] == f"acc-{unique}\x00"
    assert bytes(stored_key) == nul_key
    [published] = await read_topic(settings, settings.topic_dlq, at_least=1)
    assert published["key_base64"] == letter["key_base64"]


async def test_usage_with_a_null_key_or_another_accounts_key_is_not_charged(
    settings: Settings, unique: str
) -> None:
    account, other = f"acc-{unique}", f"other-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await send(
            settings,
            settings.topic_usage,
            [
                (None, orjson.dumps(usage(f"null-{unique}", account, ago(hours=1)))),
                (other.encode(), orjson.dumps(usage(f"foreign-{unique}", account, ago(hours=1)))),
                (account.encode(), orjson.dumps(usage(f"ok-{unique}", account, ago(hours=1)))),
            ],
        )
        await wait_applied(conn, [f"ok-{unique}"])
        letters = await dead_letters(conn, settings.topic_dlq)
        charged = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'charge'",
            account,
        )
        other_exists = await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE account_id = $1", other
        )
    assert charged == 1
    assert other_exists == 0
    assert [(d["error_code"], d["source_offset"], d["key"]) for d in letters] == [
        ("key_mismatch", 0, None),
        ("key_mismatch", 1, other),
    ]


async def test_a_purchase_dated_9999_is_refused_as_implausible_time(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    far = purchased(f"far-{unique}", account, ago(hours=1), 1000)
    far["occurred_at"] = "9999-10-02T23:30:00Z"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await send(
            settings,
            settings.topic_account_events,
            [
                (account.encode(), orjson.dumps(opened(f"o-{unique}", account, ago(hours=2), 0))),
                (account.encode(), orjson.dumps(far)),
                (
                    account.encode(),
                    orjson.dumps(purchased(f"p-{unique}", account, ago(hours=1), 2000)),
                ),
            ],
        )
        await wait_applied(conn, [f"p-{unique}"])
        lots = await conn.fetch("SELECT amount_jpy FROM lots WHERE account_id = $1", account)
        letters = await dead_letters(conn, settings.topic_dlq)
    assert [row["amount_jpy"] for row in lots] == [2000]
    assert [(d["error_code"], d["source_offset"]) for d in letters] == [("implausible_time", 1)]


async def test_dlq_replay_ends_while_the_worker_dead_letters_the_replayed_record_again(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await send(
            settings,
            settings.topic_usage,
            [
                (
                    account.encode(),
                    orjson.dumps(usage(f"fr-{unique}", account, ago(hours=1), destination=NO_RATE)),
                )
            ],
        )
        await read_topic(settings, settings.topic_dlq, at_least=1)

        first = await asyncio.wait_for(replay(settings, set(), dry_run=False), 60)
        # The worker dead-letters the replayed record again; the next replay takes that one.
        await read_topic(settings, settings.topic_dlq, at_least=2)  # published, not just stored
        second = await asyncio.wait_for(replay(settings, set(), dry_run=False), 60)
        charged = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1", account
        )
    assert (dict(first.replayed), dict(first.skipped), first.refused) == ({"no_rate": 1}, {}, [])
    assert (dict(second.replayed), dict(second.skipped)) == ({"no_rate": 1}, {})
    assert charged == 0


async def _dlq_rows(conn: Any, topic: str, n: int) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", topic) >= n)


async def test_dlq_replay_selects_by_error_code_and_previews_with_dry_run(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    records = [
        (
            account.encode(),
            orjson.dumps(usage(f"fr-{unique}", account, ago(hours=1), destination=NO_RATE)),
        ),
        (account.encode(), b"not json"),
        (None, orjson.dumps(usage(f"nk-{unique}", account, ago(hours=1)))),
    ]
    await create_topics(settings)
    await send(settings, settings.topic_usage, records)
    async with running_worker(settings):
        await read_topic(settings, settings.topic_dlq, at_least=3)

    preview = await replay(settings, {"no_rate", "key_mismatch"}, dry_run=True)
    again = await replay(settings, {"no_rate", "key_mismatch"}, dry_run=True)
    done = await replay(settings, {"no_rate"}, dry_run=False)
    after = await replay(settings, set(), dry_run=False)

    assert dict(preview.replayed) == {"no_rate": 1, "key_mismatch": 1}
    assert dict(preview.skipped) == {"other_error_code": 1}
    assert preview.lines(dry_run=True)[:2] == [
        "would replay 2 (key_mismatch: 1, no_rate: 1)",
        "skipped 1 (other_error_code: 1)",
    ]
    assert dict(again.replayed) == dict(preview.replayed)  # a dry run commits nothing
    assert (dict(done.replayed), dict(done.skipped)) == ({"no_rate": 1}, {"other_error_code": 2})
    assert (dict(after.replayed), dict(after.skipped)) == ({}, {})  # each letter once
    assert await log_end_total(settings, settings.topic_usage) == 3 + 1  # one replay sent


async def log_end_total(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.input_partitions)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_dlq_replay_sends_a_truncated_letters_whole_value_from_its_source(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    big = usage(f"big-{unique}", account, ago(hours=1), destination=NO_RATE)
    big["padding"] = "p" * 300_000
    value = orjson.dumps(big)
    await create_topics(settings)
    await send(settings, settings.topic_usage, [(account.encode(), value)])
    async with running_worker(settings), database(settings) as conn:
        await read_topic(settings, settings.topic_dlq, at_least=1)  # published, not just stored
        report = await replay(settings, set(), dry_run=False)
        await wait_until(lambda: _dlq_rows(conn, settings.topic_dlq, 2), 30, "its replay")
        letters = await dead_letters(conn, settings.topic_dlq)
    assert (dict(report.replayed), report.refused) == ({"no_rate": 1}, [])
    assert [(d["payload_truncated"], d["payload_size"]) for d in letters] == [
        (True, len(value)),
        (True, len(value)),  # the replay carried the whole value again, not its first 256 KiB
    ]
