"""Outbox relay: publishes committed outbox rows in Kafka transactions, exactly once.

One relay at a time holds a PostgreSQL advisory lock: several relays taking rows with
SKIP LOCKED would publish one account's messages out of order. Each round numbers its rows
(`relay_seq`, committed before anything is sent), publishes them in that order in one Kafka
transaction with the number in a header, and marks them sent after the commit. A relay that
died between the two leaves rows that are published but not marked: the next one (its
producer has the database's transactional id, so starting it fences the old one and aborts
whatever it left open) reads the highest number committed to the log and marks every row up
to it sent before it publishes anything.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, ProducerFenced, RecordTooLargeError

from worker import logs
from worker.adapters.kafka_connection import close_client
from worker.adapters.relay_log import SEQ_HEADER, highest_committed_seq
from worker.errors import is_retriable
from worker.metrics import Metrics

log = logs.get("worker.relay")

RELAY_LOCK_KEY = 0x5B111_0002
# Every commit that writes outbox rows notifies this channel (migration 0008).
NOTIFY_CHANNEL = "billing_outbox"

# Rows numbered by an earlier round that did not end in a marked commit come first, in
# their numbers' order; then new rows in id order.
_PENDING = """
SELECT id, message_id, topic, key, payload, relay_seq FROM outbox
WHERE sent_at IS NULL AND failed_at IS NULL ORDER BY relay_seq NULLS LAST, id LIMIT $1
"""
_NUMBERS = "SELECT nextval('outbox_relay_seq') AS n FROM generate_series(1, $1)"
_NUMBER = """
UPDATE outbox o SET relay_seq = u.seq
FROM unnest($1::bigint[], $2::bigint[]) AS u(id, seq) WHERE o.id = u.id
"""
_IN_DOUBT_TOPICS = """
SELECT DISTINCT topic FROM outbox
WHERE sent_at IS NULL AND failed_at IS NULL AND relay_seq IS NOT NULL
"""
_MARK_UP_TO = """
UPDATE outbox SET sent_at = now()
WHERE sent_at IS NULL AND failed_at IS NULL AND relay_seq <= $1
"""
_MARK = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])"
_ANY_UNSENT = "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL)"
# A parked row loses its number: if ops release it, it is numbered again when it is sent, so
# a number at or below the log's highest always means "published".
_PARK = "UPDATE outbox SET failed_at = now(), failure = $2, relay_seq = NULL WHERE id = $1"
# The backlog gauges are read at most this often: one more query per round is latency.
_BACKLOG_EVERY_S = 1.0
# Errors that no retry can cure for this one message: it is parked, the rest flows.
_UNSENDABLE = (MessageSizeTooLargeError, RecordTooLargeError)
_BACKLOG = """
SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE sent_at IS NULL
"""
_IDENTITY = """
SELECT (SELECT system_identifier FROM pg_control_system()) AS cluster, oid AS db
FROM pg_database WHERE datname = current_database()
"""


def build_producer(connection: dict[str, Any], client_id: str) -> AIOKafkaProducer:
    """Idempotent, acks from all in-sync replicas: a retry never reorders or doubles a send."""
    return AIOKafkaProducer(
        **connection,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=15_000,
    )


def build_transactional_producer(
    connection: dict[str, Any], client_id: str, transactional_id: str
) -> AIOKafkaProducer:
    """Idempotent and transactional; starting it fences every earlier one with the same id."""
    return AIOKafkaProducer(
        **connection,
        client_id=client_id,
        acks="all",
        transactional_id=transactional_id,
        # The broker aborts a transaction left open longer (a relay that hangs mid-round).
        transaction_timeout_ms=60_000,
        # A round sends its whole page at once, then commits: lingering only delays the commit.
        linger_ms=0,
        # AddPartitionsToTxn right after a commit may meet CONCURRENT_TRANSACTIONS while the
        # broker writes the markers; the 100 ms default retry would stall the next round.
        retry_backoff_ms=10,
        request_timeout_ms=15_000,
    )


async def transactional_id(conn: asyncpg.Connection) -> str:
    """One id per database: its cluster's system identifier and its oid, stable across restarts.

    Every relay of this database shares it, so a new one fences any older one still alive;
    a copy of the database restored elsewhere gets another id.
    """
    row = await conn.fetchrow(_IDENTITY)
    assert row is not None  # the current database exists
    return f"billing-outbox-relay-{row['cluster']}-{row['db']}"


class OutboxRelay:
    """Moves outbox rows to Kafka; `wake()` after a commit avoids waiting for the next poll."""

    def __init__(
        self,
        database_url: str,
        connection: dict[str, Any],
        client_id: str,
        metrics: Metrics,
        batch_size: int = 1000,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.database_url = database_url
        self.connection = connection  # kafka_client_args(settings)
        self.client_id = client_id
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        # When the first wake-up not yet served by a round came (for the relay_wake stage).
        self._woken_at: float | None = None
        self._backlog_read_at = -_BACKLOG_EVERY_S
        self.leader = False
        self._failing_since: float | None = None

    def wake(self) -> None:
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        self._wakeup.set()

    def _notified(self, *_: object) -> None:
        self.wake()

    def _recovered(self) -> None:
        if self._failing_since is not None:
            outage_s = round(time.monotonic() - self._failing_since, 1)
            log.info("relay_resumed", outage_s=outage_s)
            self._failing_since = None

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop`, leading when no other process does."""
        delay = 0.1
        while not stop.is_set():
            try:
                await self._lead(stop)
                return
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                # The open transaction, if any, is aborted by the next producer's start; what
                # it may have committed is found in the log by the recovery that follows.
                fenced = isinstance(exc, ProducerFenced)
                retriable = is_retriable(exc)
                # An outage (broker or database away) is one line, not one per attempt; a
                # refusal no retry will cure by itself (an ACL, a bug) is said every time.
                if not retriable or fenced or self._failing_since is None:
                    level = log.warning if fenced or retriable else log.error
                    level("relay_retrying", cause=type(exc).__name__, error=str(exc), fenced=fenced)
                self._failing_since = self._failing_since or time.monotonic()
                self.leader = False
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, 10.0)

    async def _lead(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.database_url)
        producer: AIOKafkaProducer | None = None
        try:
            while not stop.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                    break
                await _sleep_or_stop(stop, self.poll_interval_s * 5)
            if stop.is_set():
                return
            # Only the lock holder starts a producer: starting one fences the one in use.
            producer = await self._start(conn)
            # Another process's commits wake this leader too; the poll is only a safety net.
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
            self.leader = True
            while not stop.is_set():
                sent = await self.relay_once(conn, producer)
                self._recovered()
                if sent < self.batch_size:
                    await self._idle(stop)
        finally:
            self.leader = False
            try:
                if producer is not None:
                    await close_client(producer)
            finally:
                await conn.close()

    async def _start(self, conn: asyncpg.Connection) -> AIOKafkaProducer:
        """A producer that fenced every earlier relay, after the log's account is taken."""
        producer = build_transactional_producer(
            self.connection, self.client_id + "-relay", await transactional_id(conn)
        )
        try:
            await producer.start()
            await self.recover(conn, producer)
        except BaseException:
            await close_client(producer)
            raise
        return producer

    async def recover(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Mark sent every numbered row the log holds committed; how many were."""
        topics = sorted(r["topic"] for r in await conn.fetch(_IN_DOUBT_TOPICS))
        if not topics:
            return 0
        # Only the topics of numbered unsent rows: a row in doubt sits in one of their
        # partitions, and the last commit cannot have reached any other topic unmarked.
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await producer.partitions_for(topic))
        ]
        highest = await highest_committed_seq(
            self.connection, self.client_id + "-relay-recovery", tps
        )
        marked = int((await conn.execute(_MARK_UP_TO, highest)).split()[-1])
        log.info("relay_recovered", highest_seq=highest, marked_sent=marked, topics=topics)
        return marked

    async def publish_pending(self) -> bool:
        """Publish what is committed now unless another relay leads (then it will: False)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return False
            producer = await self._start(conn)
            try:
                while await self.relay_once(conn, producer) == self.batch_size:
                    pass
            finally:
                await close_client(producer)
            return True
        finally:
            await conn.close()  # ending the session releases the advisory lock

    async def _number(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[int]:
        """Each row's sequence number, new ones committed before any of them is sent."""
        new = [row["id"] for row in rows if row["relay_seq"] is None]
        numbers: list[int] = []
        if new:
            numbers = sorted(r["n"] for r in await conn.fetch(_NUMBERS, len(new)))
            await conn.execute(_NUMBER, new, numbers)
        given = dict(zip(new, numbers, strict=True))
        return [row["relay_seq"] or given[row["id"]] for row in rows]

    async def _send(
        self, producer: AIOKafkaProducer, row: asyncpg.Record, seq: int
    ) -> asyncio.Future[Any]:
        """The broker's ack to come, or at once the error a too large message raises."""
        try:
            future: asyncio.Future[Any] = await producer.send(
                row["topic"],
                value=bytes(row["payload"]),
                key=None if row["key"] is None else bytes(row["key"]),
                headers=[
                    ("message_id", row["message_id"].encode()),
                    (SEQ_HEADER, str(seq).encode()),
                ],
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
        # Not cleared here: a wake-up that came during the round just ended starts the next.
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def relay_once(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Publish one page of unsent rows in one transaction; mark them sent after the commit."""
        # Cleared before the read: a commit after this point wakes the next round.
        woken, self._woken_at = self._woken_at, None
        self._wakeup.clear()
        started = time.monotonic()
        rows = await conn.fetch(_PENDING, self.batch_size)
        if rows:
            if woken is not None:
                self.metrics.stage_seconds.labels("relay_wake").observe(started - woken)
            await self._publish(conn, producer, rows, started)
        if rows and time.monotonic() - self._backlog_read_at < _BACKLOG_EVERY_S:
            return len(rows)
        self._backlog_read_at = time.monotonic()
        backlog = await conn.fetchrow(_BACKLOG)
        assert backlog is not None  # an aggregate always returns one row
        self.metrics.outbox_backlog.set(backlog["n"])
        oldest = backlog["oldest"]
        self.metrics.outbox_oldest_s.set(
            0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        )
        return len(rows)

    async def _publish(
        self,
        conn: asyncpg.Connection,
        producer: AIOKafkaProducer,
        rows: list[asyncpg.Record],
        started: float,
    ) -> None:
        stage = self.metrics.stage_seconds
        seqs = await self._number(conn, rows)
        numbered = time.monotonic()
        stage.labels("relay_read").observe(numbered - started)
        await producer.begin_transaction()
        # Any exception from here leaves the transaction open: run() starts a new producer,
        # which aborts it, and recovers from the log before sending again.
        pairs = zip(rows, seqs, strict=True)
        futures = [await self._send(producer, row, seq) for row, seq in pairs]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        unsendable = [
            (row, o) for row, o in zip(rows, outcomes, strict=True) if isinstance(o, _UNSENDABLE)
        ]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _UNSENDABLE):
                raise outcome
        acked = time.monotonic()
        stage.labels("relay_produce").observe(acked - numbered)
        # Parked before the commit: a crash after it must not find a numbered row that the
        # log does not hold below the log's highest number.
        for row, outcome in unsendable:
            await self._park(conn, row, outcome)
        if any(isinstance(o, RecordTooLargeError) for _, o in unsendable):
            # The broker refused a whole batch: commit nothing of the page; the rest goes
            # in the next round's transaction.
            await producer.abort_transaction()
            return
        await producer.commit_transaction()
        stage.labels("relay_commit").observe(time.monotonic() - acked)
        parked = {row["id"] for row, _ in unsendable}
        sent = [row for row in rows if row["id"] not in parked]
        await conn.execute(_MARK, [row["id"] for row in sent])
        for row in sent:
            self.metrics.outbox_sent.labels(row["topic"]).inc()


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
