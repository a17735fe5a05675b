"""Outbox relay: publishes committed outbox rows in Kafka transactions, exactly once.

One relay at a time holds a PostgreSQL advisory lock: several relays taking rows with
SKIP LOCKED would publish one account's messages out of order. Each round numbers its rows
(`relay_seq`, committed before anything is sent), publishes them in that order in one Kafka
transaction with the number in a header, and marks them sent after the commit. A relay that
died between the two leaves rows that are published but not marked: the next one (its
producer has the database's transactional id, so starting it fences the old one and aborts
whatever it left open) reads the highest number committed to the log and marks every row up
to it sent before it publishes anything, once it has checked that the log is this database's
own (its stamp on the last messages, no number this database has not given out yet).

A message the broker refuses for good (too large for the topic, or invalid for it: no key on
a compacted topic) is parked with its reason, not retried forever: the rows behind it flow on
(see `_publish`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import (
    BrokerResponseError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
)

from worker import logs
from worker.adapters.kafka_connection import close_client
from worker.adapters.observe import outbox_backlog
from worker.adapters.postgres import SESSION_SETTINGS
from worker.adapters.relay_log import (
    SEQ_HEADER,
    STAMP_HEADER,
    committed_tail,
    mismatch,
    partitions_of,
)
from worker.errors import OutputLogMismatch, WorkerError, is_retriable
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
# A row a batch has conflated away (docs/adr/0003) since the page was read is not found here
# (its DELETE holds the row until it commits, then this UPDATE skips it); only the rows it
# numbers are published, so a superseded snapshot never goes out and a number, once given to
# a row, belongs to a row that stays until it is marked sent.
_NUMBER = """
UPDATE outbox o SET relay_seq = u.seq
FROM unnest($1::bigint[], $2::bigint[]) AS u(id, seq)
WHERE o.id = u.id AND o.relay_seq IS NULL AND o.sent_at IS NULL AND o.failed_at IS NULL
RETURNING o.id
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


class InvalidRecordError(BrokerResponseError):  # type: ignore[misc]
    """INVALID_RECORD (87): the broker's validation refused a record of the batch."""

    errno = 87
    message = "INVALID_RECORD"
    description = (
        "The broker refused a record of the batch (e.g. one without a key on a compacted topic)."
    )


# aiokafka 0.14 has no class for code 87: the producer would fail the batch with a bare
# UnknownError, which says nothing of the record and could be anything. Registered, the code
# fails it with InvalidRecordError; a later aiokafka that has its own class keeps it.
kafka_errors.kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)
# What the broker (or the client, for its own request limit) answers about one message that
# no retry can cure: larger than the topic's max.message.bytes or its segment, or invalid for
# the topic. Errors about a whole topic (authorization, a missing topic) or the host (a
# timestamp out of bounds: the relay sets none, so its clock is wrong) are retried instead,
# with the rows kept in order, as is an error code aiokafka does not know (UnknownError).
_REFUSALS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    kafka_errors.for_code(InvalidRecordError.errno),
)
_STAMP = "SELECT stamp::text FROM database_stamp"
# The highest number this database has given out (0: none yet).
_NUMBERED = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_relay_seq"
_IDENTITY = """
SELECT (SELECT system_identifier FROM pg_control_system()) AS cluster, oid AS db
FROM pg_database WHERE datname = current_database()
"""


class RoundRefused(WorkerError):
    """The broker refused a message of the round; the producer cannot go on with it."""

    retriable = True


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
        topics: Sequence[str] = (),
    ) -> None:
        self.database_url = database_url
        self.connection = connection  # kafka_client_args(settings)
        self.client_id = client_id
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        # The output topics whose log is checked at every start, besides those of rows in doubt.
        self.topics = tuple(topics)
        self._stamp = b""  # this database's stamp, read when a producer starts
        # After a refused round: send the next one a message at a time, to find the refused one.
        self._isolating = False
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
            except OutputLogMismatch as exc:
                # Publishing would lose messages silently: the worker stops and says why.
                log.error("relay_refused", error=str(exc))
                raise
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
        conn = await asyncpg.connect(self.database_url, server_settings=SESSION_SETTINGS)
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
                try:
                    sent = await self.relay_once(conn, producer)
                except RoundRefused:
                    # Its open transaction is aborted by the next producer's start.
                    await close_client(producer)
                    producer = None
                    producer = await self._start(conn)
                    continue
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
        """Check that the output log is this database's, then mark sent every numbered row
        the log holds committed; how many were. Raises OutputLogMismatch when it is not."""
        stamp = await conn.fetchval(_STAMP)
        self._stamp = stamp.encode()
        in_doubt = {r["topic"] for r in await conn.fetch(_IN_DOUBT_TOPICS)}
        # A row in doubt sits in a partition of its topic; the configured topics are read
        # too, so that a log ahead of this database is seen before anything is numbered.
        tps = await partitions_of(producer.client, in_doubt | set(self.topics))
        if not tps:
            return 0
        tail = await committed_tail(self.connection, self.client_id + "-relay-recovery", tps)
        problem = mismatch(tail, stamp, await conn.fetchval(_NUMBERED))
        if problem is not None:
            raise OutputLogMismatch(problem)
        if not in_doubt:
            return 0
        marked = int((await conn.execute(_MARK_UP_TO, tail.highest_seq)).split()[-1])
        log.info(
            "relay_recovered",
            highest_seq=tail.highest_seq,
            marked_sent=marked,
            topics=sorted(in_doubt),
        )
        return marked

    async def publish_pending(self) -> bool:
        """Publish what is committed now unless another relay leads (then it will: False)."""
        conn = await asyncpg.connect(self.database_url, server_settings=SESSION_SETTINGS)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return False
            producer: AIOKafkaProducer | None = await self._start(conn)
            try:
                while True:
                    assert producer is not None
                    try:
                        if await self.relay_once(conn, producer) < self.batch_size:
                            return True
                    except RoundRefused:
                        await close_client(producer)
                        producer = None
                        producer = await self._start(conn)
            finally:
                if producer is not None:
                    await close_client(producer)
        finally:
            await conn.close()  # ending the session releases the advisory lock

    async def _number(
        self, conn: asyncpg.Connection, rows: list[asyncpg.Record]
    ) -> tuple[list[asyncpg.Record], list[int]]:
        """The rows still to publish and their sequence numbers, new ones committed before any
        of them is sent; rows conflated away since the page was read are left out."""
        new = [row["id"] for row in rows if row["relay_seq"] is None]
        numbers: list[int] = []
        kept: set[int] = set()
        if new:
            numbers = sorted(r["n"] for r in await conn.fetch(_NUMBERS, len(new)))
            kept = {r["id"] for r in await conn.fetch(_NUMBER, new, numbers)}
        given = dict(zip(new, numbers, strict=True))
        live = [row for row in rows if row["relay_seq"] is not None or row["id"] in kept]
        return live, [row["relay_seq"] or given[row["id"]] for row in live]

    async def _send(
        self, producer: AIOKafkaProducer, row: asyncpg.Record, seq: int
    ) -> asyncio.Future[Any]:
        """The broker's ack to come, or at once the error a message too large for the client
        raises."""
        try:
            future: asyncio.Future[Any] = await producer.send(
                row["topic"],
                value=bytes(row["payload"]),
                key=None if row["key"] is None else bytes(row["key"]),
                headers=[
                    ("message_id", row["message_id"].encode()),
                    (SEQ_HEADER, str(seq).encode()),
                    (STAMP_HEADER, self._stamp),
                ],
            )
        except _REFUSALS as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return future

    async def _park(self, conn: asyncpg.Connection, row: asyncpg.Record, exc: Exception) -> None:
        size = len(row["payload"]) + len(row["key"] or b"")
        # The broker's answer is a bare code: its meaning and the message's size go with it.
        what = str(exc) if exc.args else str(getattr(exc, "description", "")) or str(exc)
        reason = f"{type(exc).__name__}: {what} (key and value {size} bytes)"
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
        self.metrics.set_outbox(*await outbox_backlog(conn))
        return len(rows)

    async def _publish(
        self,
        conn: asyncpg.Connection,
        producer: AIOKafkaProducer,
        rows: list[asyncpg.Record],
        started: float,
    ) -> None:
        stage = self.metrics.stage_seconds
        rows, seqs = await self._number(conn, rows)
        numbered = time.monotonic()
        stage.labels("relay_read").observe(numbered - started)
        if not rows:
            return
        await producer.begin_transaction()
        # Any exception from here leaves the transaction open: run() starts a new producer,
        # which aborts it, and recovers from the log before sending again.
        if self._isolating:
            await self._send_one_by_one(conn, producer, rows, seqs)
        else:
            pairs = zip(rows, seqs, strict=True)
            futures = [await self._send(producer, row, seq) for row, seq in pairs]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            if any(isinstance(o, _REFUSALS) for o in outcomes):
                # The broker refuses a whole record batch, which may hold other rows too, and
                # this producer's sequence numbers for the partition are spent: the next round,
                # with a new producer, sends one message at a time to find the refused row.
                self._isolating = True
                log.warning("relay_round_refused", rows=len(rows), note="finding the refused row")
                raise RoundRefused(f"{len(rows)} rows, one or more refused")
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        acked = time.monotonic()
        stage.labels("relay_produce").observe(acked - numbered)
        await producer.commit_transaction()
        stage.labels("relay_commit").observe(time.monotonic() - acked)
        await conn.execute(_MARK, [row["id"] for row in rows])
        for row in rows:
            self.metrics.outbox_sent.labels(row["topic"]).inc()

    async def _send_one_by_one(
        self,
        conn: asyncpg.Connection,
        producer: AIOKafkaProducer,
        rows: list[asyncpg.Record],
        seqs: list[int],
    ) -> None:
        """Each message acked before the next is sent, so each is a record batch of its own
        and a refusal names its row: that row is parked, and the round ends uncommitted."""
        for row, seq in zip(rows, seqs, strict=True):
            try:
                await (await self._send(producer, row, seq))
            except _REFUSALS as exc:
                # Parked (and un-numbered) before any later round commits: a number at or
                # below the log's highest then always means "published".
                await self._park(conn, row, exc)
                self._isolating = False
                raise RoundRefused(f"row {row['id']} refused and parked") from exc
        self._isolating = False


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
