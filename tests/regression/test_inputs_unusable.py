"""A missing input topic, or inputs partitioned differently, leave the worker waiting and not
ready, saying why; it resumes by itself once the topics are fixed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from tests.integration.kit import (
    ARRIVAL_STAMPED,
    ago,
    database,
    opened,
    produce,
    wait_applied,
    wait_until,
)
from tests.integration.ops_kit import ready
from worker.app import Worker
from worker.config import Settings

pytestmark = pytest.mark.integration


async def _admin(settings: Settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    return admin


async def test_missing_and_lopsided_inputs_wait_not_ready_then_resume(
    settings: Settings, unique: str
) -> None:
    admin = await _admin(settings)
    try:
        outputs = [
            settings.topic_reminders,
            settings.topic_invoices,
            settings.topic_dlq,
            settings.topic_balances,
        ]
        await admin.create_topics(
            [NewTopic(settings.topic_usage, 3, 1, topic_configs=ARRIVAL_STAMPED)]
            + [NewTopic(t, 2, 1) for t in outputs]
        )
        worker = Worker(settings, handle_signals=False)
        task = asyncio.create_task(worker.run())
        try:

            async def inputs_detail(*expected: str) -> bool:
                assert not task.done(), task.exception() if task.done() else ""
                if worker.stream is None or worker.http_port is None:
                    return False
                status, body = await ready(worker)
                check: dict[str, Any] = body["checks"]["inputs"]
                return status == 503 and all(e in check["detail"] for e in expected)

            await wait_until(
                lambda: inputs_detail("missing", settings.topic_account_events),
                30,
                "/ready to name the missing account topic",
            )
            await admin.create_topics(
                [NewTopic(settings.topic_account_events, 2, 1, topic_configs=ARRIVAL_STAMPED)]
            )
            await wait_until(
                lambda: inputs_detail(
                    f"{settings.topic_usage} has 3", f"{settings.topic_account_events} has 2"
                ),
                30,
                "/ready to name both topics and their partition counts",
            )
            await admin.create_partitions({settings.topic_account_events: NewPartitions(3)})

            async def usable() -> bool:
                assert not task.done()
                _, body = await ready(worker)
                return bool(body["checks"]["inputs"]["ok"])

            await wait_until(usable, 30, "the worker to accept the fixed inputs")
            account = f"acc-{unique}"
            await produce(
                settings, settings.topic_account_events, [opened(f"o-{unique}", account, ago())]
            )
            async with database(settings) as conn:
                await wait_applied(conn, [f"o-{unique}"])
        finally:
            worker.stop.set()
            await asyncio.wait_for(task, timeout=60)
    finally:
        await admin.close()
