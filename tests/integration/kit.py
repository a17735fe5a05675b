"""Helpers for tests that talk to the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.app import Worker
from worker.config import Settings


async def create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        inputs = [settings.topic_usage, settings.topic_account_events]
        outputs = [settings.topic_reminders, settings.topic_invoices, settings.topic_dlq]
        await admin.create_topics(
            [NewTopic(t, settings.input_partitions, 1) for t in inputs]
            + [NewTopic(t, settings.output_partitions, 1) for t in outputs]
        )
    finally:
        await admin.close()


async def produce(settings: Settings, topic: str, events: Iterable[dict[str, Any] | bytes],
                  key: str | None = None) -> None:
    """Send events in order, keyed by their account (or `key`), and wait for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            if isinstance(event, bytes):
                value, account = event, key
            else:
                value, account = orjson.dumps(event), key or event.get("account_id")
            await producer.send_and_wait(topic, value,
                                         key=None if account is None else account.encode())
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, *, at_least: int = 0,
                     timeout_s: float = 20.0, settle_s: float = 0.5) -> list[dict[str, Any]]:
    """Every message on `topic` from the start: wait for `at_least`, then for quiet."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            got = [orjson.loads(m.value) for msgs in batch.values() for m in msgs]
            if got:
                out.extend(got)
                quiet_since = time.monotonic()
            elif len(out) >= at_least and time.monotonic() - quiet_since >= settle_s:
                break
        return out
    finally:
        await consumer.stop()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A worker in this process and event loop, stopped the way SIGTERM stops it."""
    worker = Worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _started(worker, task), 30, "the worker to join its group")
        yield worker
    finally:
        worker.stop.set()
        await asyncio.wait_for(task, timeout=60)


async def _started(worker: Worker, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    stream = worker.stream
    consumer = stream.consumer if stream is not None else None
    return consumer is not None and bool(consumer.assignment())
