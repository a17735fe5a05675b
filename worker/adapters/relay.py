"""Outbox relay: publishes committed outbox rows in id order, marks them sent after the ack.

One relay at a time holds a PostgreSQL advisory lock: several relays taking rows with
SKIP LOCKED would publish one account's messages out of order.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from worker import logs
from worker.errors import is_retriable
from worker.metrics import Metrics

log = logs.get("worker.relay")

RELAY_LOCK_KEY = 0x5B111_0002

_PENDING = """
SELECT id, message_id, topic, key, payload FROM outbox
WHERE sent_at IS NULL AND failed_at IS NULL ORDER BY id LIMIT $1
"""
_ANY_UNSENT = "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL)"
_PARK = "UPDATE outbox SET failed_at = now(), failure = $2 WHERE id = $1"
# Errors that no retry can cure for this one message: it is parked, the rest flows.
_UNSENDABLE = (MessageSizeTooLargeError, RecordTooLargeError)
_BACKLOG = """
SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE sent_at IS NULL
"""


def build_producer(bootstrap_servers: str, client_id: str) -> AIOKafkaProducer:
    """Idempotent, acks from all in-sync replicas: a retry never reorders or doubles a send."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=15_000,
    )


class OutboxRelay:
    """Moves outbox rows to Kafka; `wake()` after a commit avoids waiting for the next poll."""

    def __init__(
        self,
        database_url: str,
        bootstrap_servers: str,
        client_id: str,
        metrics: Metrics,
        batch_size: int = 1000,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.database_url = database_url
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self.leader = False

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop`, leading when no other process does."""
        delay = 0.1
        while not stop.is_set():
            try:
                await self._lead(stop)
                return
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                # Nothing of the failed page was marked sent: it is sent again, in order.
                level = log.warning if is_retriable(exc) else log.error
                level("relay_retrying", cause=type(exc).__name__, error=str(exc))
                self.leader = False
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, 10.0)

    async def _lead(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.database_url)
        producer = build_producer(self.bootstrap_servers, self.client_id + "-relay")
        try:
            await producer.start()
            while not stop.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                    self.leader = True
                    break
                await _sleep_or_stop(stop, self.poll_interval_s * 5)
            while not stop.is_set():
                sent = await self.relay_once(conn, producer)
                if sent < self.batch_size:
                    await self._idle(stop)
        finally:
            self.leader = False
            await producer.stop()
            await conn.close()

    async def publish_pending(self) -> bool:
        """Publish what is committed now unless another relay leads (then it will: False)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return False
            producer = build_producer(self.bootstrap_servers, self.client_id + "-relay")
            await producer.start()
            try:
                while await self.relay_once(conn, producer) == self.batch_size:
                    pass
            finally:
                await producer.stop()
            return True
        finally:
            await conn.close()  # ending the session releases the advisory lock

    async def _send(self, producer: AIOKafkaProducer, row: asyncpg.Record) -> asyncio.Future[Any]:
        """The broker's ack to come, or at once the error a too large message raises."""
        try:
            future: asyncio.Future[Any] = await producer.send(
                row["topic"],
                value=bytes(row["payload"]),
                key=None if row["key"] is None else bytes(row["key"]),
                headers=[("message_id", row["message_id"].encode())],
            )
        except _UNSENDABLE as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return future

    async def _park(self, conn: asyncpg.Connection, row: asyncpg.Record, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        await conn.execute(_PARK, row["id"], reason)
        self.metrics.outbox_parked.labels(row["topic"]).inc()
        log.error(
            "outbox_row_parked",
            message_id=row["message_id"],
            topic=row["topic"],
            size=len(row["payload"]),
            reason=reason,
        )

    async def _idle(self, stop: asyncio.Event) -> None:
        self._wakeup.clear()
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def relay_once(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Send one page of unsent rows in id order; mark them sent once all are acked."""
        rows = await conn.fetch(_PENDING, self.batch_size)
        if rows:
            outcomes = await asyncio.gather(
                *[await self._send(producer, row) for row in rows], return_exceptions=True
            )
            sent = []
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, _UNSENDABLE):
                    await self._park(conn, row, outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome  # retried by run(): nothing of this page is marked sent
                else:
                    sent.append(row)
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in sent],
            )
            for row in sent:
                self.metrics.outbox_sent.labels(row["topic"]).inc()
        backlog = await conn.fetchrow(_BACKLOG)
        assert backlog is not None  # an aggregate always returns one row
        self.metrics.outbox_backlog.set(backlog["n"])
        oldest = backlog["oldest"]
        self.metrics.outbox_oldest_s.set(
            0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        )
        return len(rows)


async def drain(relay: OutboxRelay, database_url: str, timeout_s: float) -> bool:
    """Wait until the outbox has nothing unsent (True) or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    conn = await asyncpg.connect(database_url)
    try:
        while time.monotonic() < deadline:
            if not await conn.fetchval(_ANY_UNSENT):
                return True
            relay.wake()
            await asyncio.sleep(0.05)
        return False
    finally:
        await conn.close()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
