"""Month close waits for the group to catch up; with a transactional upstream it must still."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.postgres import PgStore
from worker.builders import create_pool, encoder_from
from worker.config import Settings
from worker.entrypoints.month_close import MonthCloser
from worker.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_the_group_counts_as_caught_up_after_applying_a_transactional_producers_events(
    settings: Settings, unique: str
) -> None:
    # The worker reads read_committed. After a committed transaction the log end is the
    # commit marker + 1, while the worker commits last record + 1: one short forever.
    await create_topics(settings)
    producer = AIOKafkaProducer(**kafka_client_args(settings), transactional_id=f"tx-{unique}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(
                settings.topic_usage,
                orjson.dumps(usage(f"u-{unique}", f"acc-{unique}", ago(hours=1))),
                key=f"acc-{unique}".encode(),
            )
    finally:
        await producer.stop()
    period = f"{1100 + int(unique, 16) % 700:04d}-03"  # a mark no other test takes
    async with running_worker(settings), database(settings) as conn:
        await wait_applied(conn, [f"u-{unique}"])
        pool = await create_pool(settings, size=2)
        try:
            closer = MonthCloser(settings, PgStore(pool), encoder_from(settings), Metrics())
            # several commits later (10 s) the close gate must see the group caught up
            await wait_until(lambda: closer.caught_up(period), 10, "the close gate to pass")
        finally:
            await pool.close()
