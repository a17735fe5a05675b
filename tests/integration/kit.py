"""Helpers for tests that talk to the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from tests.waiting import wait_until
from worker.adapters.kafka_connection import kafka_client_args
from worker.app import Worker
from worker.config import Settings

# As the worker wants its inputs: the broker stamps each record's arrival.
ARRIVAL_STAMPED = {"message.timestamp.type": "LogAppendTime"}
PRODUCER_STAMPED = {"message.timestamp.type": "CreateTime"}


async def create_topics(settings: Settings, *, producer_stamped: bool = False) -> None:
    """The topics of `settings`; `producer_stamped` inputs keep the producers' timestamps
    (CreateTime: a test can date a record's arrival; a worker on them needs
    `allow_create_time_inputs`)."""
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    try:
        await admin.start()
        inputs = [settings.topic_usage, settings.topic_account_events]
        outputs = [settings.topic_reminders, settings.topic_invoices, settings.topic_dlq]
        compacted = {"cleanup.policy": "compact"}
        stamped = PRODUCER_STAMPED if producer_stamped else ARRIVAL_STAMPED
        await admin.create_topics(
            [NewTopic(t, settings.input_partitions, 1, topic_configs=stamped) for t in inputs]
            + [NewTopic(t, settings.output_partitions, 1) for t in outputs]
            + [
                NewTopic(
                    settings.topic_balances, settings.output_partitions, 1, topic_configs=compacted
                )
            ]
        )
    finally:
        await admin.close()


async def produce(
    settings: Settings, topic: str, events: Iterable[dict[str, Any] | bytes], key: str | None = None
) -> None:
    """Send events in order, keyed by their account (or `key`), and wait for the acks."""
    producer = AIOKafkaProducer(**kafka_client_args(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            if isinstance(event, bytes):
                value, account = event, key
            else:
                value, account = orjson.dumps(event), key or event.get("account_id")
            await producer.send_and_wait(
                topic, value, key=None if account is None else account.encode()
            )
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    at_least: int = 0,
    timeout_s: float = 20.0,
    settle_s: float = 0.5,
) -> list[dict[str, Any]]:
    """Every message on `topic` from the start: wait for `at_least`, then for quiet."""
    consumer = AIOKafkaConsumer(
        **kafka_client_args(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
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


# --- event builders, database probes and positions (shared by the integration tests) ---

JP_NUMBER = "+819012345678"


def ago(**delta: float) -> datetime:
    """The wall clock minus `delta` (timedelta keywords), in UTC."""
    return datetime.now(UTC) - timedelta(**delta)


def stamp(at: datetime) -> str:
    """RFC 3339 with offset, as the wire wants it."""
    return at.isoformat()


def usage(
    event_id: str,
    account: str,
    at: datetime,
    segments: int = 1,
    destination: str = JP_NUMBER,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "account_id": account,
        "occurred_at": stamp(at),
        "destination": destination,
        "segments": segments,
        **extra,
    }


def opened(
    event_id: str, account: str, at: datetime, test_credits: int | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "account_opened",
        "event_id": event_id,
        "account_id": account,
        "occurred_at": stamp(at),
    }
    if test_credits is not None:
        event["test_credits"] = test_credits
    return event


def purchased(
    event_id: str, account: str, at: datetime, amount: int, payment_method: str = "credit_card"
) -> dict[str, Any]:
    return {
        "type": "credits_purchased",
        "event_id": event_id,
        "account_id": account,
        "occurred_at": stamp(at),
        "purchase_id": f"p-{event_id}",
        "amount": amount,
        "payment_method": payment_method,
    }


def reminder_set(
    event_id: str,
    account: str,
    at: datetime,
    threshold: int,
    enabled: bool = True,
    email: str = "ops@example.jp",
) -> dict[str, Any]:
    return {
        "type": "reminder_configured",
        "event_id": event_id,
        "account_id": account,
        "occurred_at": stamp(at),
        "enabled": enabled,
        "threshold": threshold,
        "email": email,
    }


async def produce_positions(
    settings: Settings, topic: str, events: Iterable[dict[str, Any] | bytes], key: str | None = None
) -> list[tuple[int, int]]:
    """Like `produce`, but returns each record's (partition, offset)."""
    producer = AIOKafkaProducer(**kafka_client_args(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        out = []
        for event in events:
            if isinstance(event, bytes):
                value, account = event, key
            else:
                value, account = orjson.dumps(event), key or event.get("account_id")
            meta = await producer.send_and_wait(
                topic, value, key=None if account is None else account.encode()
            )
            out.append((meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def wait_applied(
    conn: asyncpg.Connection, event_ids: Sequence[str], timeout_s: float = 30.0
) -> None:
    """Until every one of `event_ids` is applied (`applied_events`, either source)."""
    wanted = set(event_ids)

    async def done() -> bool:
        rows = await conn.fetch(
            "SELECT DISTINCT event_id FROM applied_events WHERE event_id = ANY($1::text[])",
            list(wanted),
        )
        return len(rows) == len(wanted)

    await wait_until(done, timeout_s, f"{len(wanted)} events to be applied")


async def wait_outbox_sent(
    conn: asyncpg.Connection,
    key: str,
    at_least: int = 1,
    timeout_s: float = 30.0,
    topic: str | None = None,
) -> int:
    """Until at least `at_least` outbox rows keyed `key` (on `topic`, if given) exist and all
    are sent; returns count."""
    count = 0

    async def sent() -> bool:
        nonlocal count
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE sent_at IS NULL) AS unsent"
            " FROM outbox WHERE key = convert_to($1, 'UTF8') AND ($2::text IS NULL OR topic = $2)",
            key,
            topic,
        )
        count = row["n"]
        return bool(row["n"] >= at_least and row["unsent"] == 0)

    await wait_until(sent, timeout_s, f"outbox rows for {key} to be relayed")
    return count


async def messages_for(
    settings: Settings, topic: str, key: str, at_least: int = 0
) -> list[dict[str, Any]]:
    """Messages on `topic` about account `key` (reminders carry account_id, DLQ the key)."""
    deadline = time.monotonic() + 30
    while True:
        found = [
            m
            for m in await read_topic(settings, topic, settle_s=0.2)
            if m.get("account_id", m.get("key")) == key
        ]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found


async def lot_remaining(conn: asyncpg.Connection, account: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT lot_id, remaining_jpy FROM lots WHERE account_id = $1", account)
    return {row["lot_id"]: row["remaining_jpy"] for row in rows}


async def account_row(conn: asyncpg.Connection, account: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM accounts WHERE account_id = $1", account)
    assert row is not None, f"no account {account}"
    return row


async def ledger(conn: asyncpg.Connection, account: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT entry_id, kind, amount_jpy, balance_after_jpy, ref, allocations"
        " FROM ledger_entries WHERE account_id = $1 ORDER BY recorded_at, entry_id",
        account,
    )
    return [{**dict(row), "allocations": orjson.loads(row["allocations"])} for row in rows]


CLI = Path(sys.executable).with_name("billing-worker")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment that makes `billing-worker` use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"BILLING_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    env.update({f"BILLING_{k.upper()}": v for k, v in extra.items()})
    return env


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run `billing-worker ARGS` without blocking the event loop; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
