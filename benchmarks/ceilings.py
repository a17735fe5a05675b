"""What this machine can do at best: read + decode the input, and write it durably."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from benchmarks.kit import Services, create_database, topic_partitions
from benchmarks.workload import Row


@dataclass(frozen=True)
class Ceiling:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def kafka_ceiling(
    services: Services, topics: list[str], partitions: int, expected: int, max_records: int
) -> Ceiling:
    """A plain aiokafka consumer reading both input topics and decoding every value with
    orjson, nothing else: the worker's client settings, no group, no commits."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=services.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_records,
    )
    await consumer.start()
    try:
        consumer.assign([tp for t in topics for tp in topic_partitions(t, partitions)])
        seen = 0
        started = 0.0
        deadline = time.monotonic() + 600
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {seen} of {expected} records")
            fetched = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if fetched and not started:
                started = time.perf_counter()
            for messages in fetched.values():
                for message in messages:
                    # The mix's dead letters are decoded as far as they go.
                    with contextlib.suppress(orjson.JSONDecodeError):
                        orjson.loads(message.value)  # type: ignore[arg-type]
                seen += len(messages)
        return Ceiling(seen, time.perf_counter() - started)
    finally:
        await consumer.stop()


_TABLE = """
CREATE TABLE usage_min (
    event_id     text PRIMARY KEY,
    account_id   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    amount_jpy   bigint NOT NULL
)
"""


async def postgres_ceiling(
    services: Services, db_name: str, rows: Sequence[Row], events: int, batch: int
) -> Ceiling:
    """The fewest durable writes for the same events: one row per applied event, keyed by
    event id (de-duplication needs that key), COPY'd and committed `batch` events at a time
    over one connection; the rate counts every input event, as the worker's does."""
    url = await create_database(services, db_name, migrated=False)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_TABLE)
        per_batch = max(int(batch * len(rows) / max(events, 1)), 1)
        started = time.perf_counter()
        for begin in range(0, len(rows), per_batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "usage_min",
                    records=rows[begin : begin + per_batch],
                    columns=["event_id", "account_id", "occurred_at", "amount_jpy"],
                )
        seconds = time.perf_counter() - started
        written = await conn.fetchval("SELECT count(*) FROM usage_min")
        if written != len(rows):
            raise RuntimeError(f"PostgreSQL ceiling wrote {written} of {len(rows)} rows")
        return Ceiling(events, seconds)
    finally:
        await conn.close()
