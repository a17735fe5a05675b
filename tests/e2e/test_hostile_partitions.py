"""Hostile records on every partition of both inputs, then a normal record behind each:
every normal one is applied, every hostile one dead-lettered once, and the worker lives."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    read_topic,
    usage,
    wait_applied,
    wait_until,
)
from tests.regression.test_bad_and_long_input import worker_task
from worker.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HEADERS = [("", b"\x00\xff"), ("h" * 300, b""), ("message_id", b"\xfe")]


def hostile(account: str, source: str, n: int) -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, expected error code) for one partition: every kind of bad record."""
    key = account.encode()
    if source == "usage":
        good: dict[str, Any] = usage(f"{account}-h{n}", account, ago(hours=1))
    else:
        good = opened(f"{account}-h{n}", account, ago(hours=1))
    far = {**good, "occurred_at": "9999-10-02T23:30:00Z"}
    nul = {**good, "account_id": account + "\x00"}
    rnd = random.Random(n)
    return [
        (key + b"\x00", b"not json", "malformed_json"),
        (key + b"\x00", orjson.dumps(good), "key_mismatch"),
        (b"\xff\xfe" + key, orjson.dumps(good), "key_mismatch"),
        (b"", orjson.dumps(good), "key_mismatch"),
        (b"k" * 10240, orjson.dumps(good), "key_mismatch"),
        (None, orjson.dumps(good), "key_mismatch"),
        (key, b"\xff" + rnd.randbytes(500), "malformed_json"),
        (key, b"x" * 900_000, "malformed_json"),
        (key, None, "malformed_json"),
        (key, b"[" * 5000, "malformed_json"),
        (key, b'{"event_id": NaN}', "malformed_json"),
        (key, b'{"account_id": 123456789012345678901234567890}', "schema_violation"),
        (key, orjson.dumps(nul), "schema_violation"),
        (key, orjson.dumps(far), "implausible_time"),
        (key, b"[1, 2]", "schema_violation"),
    ]


async def test_hostile_records_on_every_partition_never_stop_the_records_behind_them(
    settings: Settings, unique: str
) -> None:
    expected: dict[tuple[str, int, int], str] = {}
    normal: list[str] = []
    await create_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=1_000_000,
    )
    async with worker_task(settings) as task, database(settings) as conn:
        await producer.start()
        try:
            for topic, source in (
                (settings.topic_usage, "usage"),
                (settings.topic_account_events, "account"),
            ):
                for partition in range(settings.input_partitions):
                    account = f"acc-{unique}-{source}-{partition}"
                    for n, (key, value, code) in enumerate(hostile(account, source, partition)):
                        meta = await producer.send_and_wait(
                            topic, value, key=key, partition=partition, headers=HEADERS[: n % 4]
                        )
                        expected[(topic, partition, meta.offset)] = code
                    event = (
                        usage(f"ok-{account}", account, ago(minutes=5))
                        if source == "usage"
                        else opened(f"ok-{account}", account, ago(minutes=5))
                    )
                    await producer.send_and_wait(
                        topic, orjson.dumps(event), key=account.encode(), partition=partition
                    )
                    normal.append(f"ok-{account}")
        finally:
            await producer.stop()
        await wait_applied(conn, normal, timeout_s=120)

        async def all_dead_lettered() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE topic = $1", settings.topic_dlq
            )
            return bool(n >= len(expected))

        await wait_until(all_dead_lettered, 60, "every hostile record to be dead-lettered")
        rows = await conn.fetch(
            "SELECT key, payload FROM outbox WHERE topic = $1", settings.topic_dlq
        )
        assert not task.done(), task
    got = {}
    for row in rows:
        letter = orjson.loads(row["payload"])
        where = (letter["source_topic"], letter["source_partition"], letter["source_offset"])
        got[where] = letter["error_code"]
    assert got == expected
    published = await read_topic(settings, settings.topic_dlq, at_least=len(expected))
    assert len(published) == len(expected)
