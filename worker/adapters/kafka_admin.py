"""Broker-side views: the group's committed offsets against the log-end offsets, and how old
the oldest record the group has not committed yet is (time lag)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError, for_code

from worker.adapters.kafka_connection import close_client, kafka_client_args
from worker.config import Settings
from worker.errors import is_retriable

Offsets = dict[TopicPartition, tuple[int | None, int]]
# Starting offset of each lagging partition's oldest uncommitted record (None: the log start).
Heads = Mapping[TopicPartition, int | None]
Row = dict[str, Any]  # one partition of a lag reading (see lag_rows)
T = TypeVar("T")

UNKNOWN_TOPIC = 3  # describe_topics error code: the topic does not exist (it has no partitions)
# Bytes one head fetch may bring per partition: the broker still sends the whole first batch
# when it is larger, so this bounds the cost without ever missing the record.
HEAD_FETCH_BYTES = 16 * 1024
LAG_RETRY_S = 15.0  # `billing-worker lag`: how long retriable broker errors are retried


class OffsetReader:
    """One admin client and one group-less consumer, opened once and reused by every read.

    Every call is bounded by `timeout_s`; after a failure the clients are closed and the next
    call opens fresh ones, so a broker that went away and came back is picked up again.
    """

    def __init__(
        self,
        connection: dict[str, Any],
        client_id: str = "sms-billing-worker-offsets",
        timeout_s: float = 5.0,
    ) -> None:
        self.connection = connection  # kafka_client_args(settings)
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # Its own consumer: on aiokafka 0.14 end_offsets() on a consumer that also fetches can
        # leave it fetching nothing after a seek.
        self._heads: AIOKafkaConsumer | None = None
        self._opening = asyncio.Lock()  # a probe and the timer may ask at the same moment

    async def __aenter__(self) -> OffsetReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every client, each one even when closing another fails or is cancelled."""
        admin, consumer, heads = self._admin, self._consumer, self._heads
        self._admin = self._consumer = self._heads = None
        try:
            if heads is not None:
                # Bounded: see _read_heads on aiokafka's fetch task; a stop that hangs must not
                # hold up the worker's shutdown.
                await close_client(heads, self.timeout_s)
        finally:
            try:
                if consumer is not None:
                    await close_client(consumer)
            finally:
                if admin is not None:
                    await close_client(admin)

    def _connection(self) -> dict[str, Any]:
        """Connection arguments shared by every client this reader builds: the one builder's
        (kafka_client_args), plus this reader's id and bound."""
        return {
            **self.connection,
            "client_id": self.client_id,
            "request_timeout_ms": int(self.timeout_s * 1000),
        }

    def _new_consumer(self, **options: Any) -> AIOKafkaConsumer:
        # read_committed: the end is the last stable offset, as far as the worker can read.
        return AIOKafkaConsumer(
            **self._connection(),
            enable_auto_commit=False,
            isolation_level="read_committed",
            **options,
        )

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        async with self._opening:
            return await self._open()

    async def _open(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.close()
            admin = AIOKafkaAdminClient(**self._connection())
            consumer = self._new_consumer()
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                try:
                    await close_client(consumer)
                finally:
                    await close_client(admin)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _head_consumer(self) -> AIOKafkaConsumer:
        async with self._opening:
            if self._heads is None:
                # earliest: a committed offset the retention already deleted reads from the
                # log start, which is where the group itself would resume.
                heads = self._new_consumer(
                    auto_offset_reset="earliest",
                    max_partition_fetch_bytes=HEAD_FETCH_BYTES,
                    fetch_max_bytes=HEAD_FETCH_BYTES,
                )
                try:
                    await heads.start()
                except BaseException:
                    await close_client(heads)
                    raise
                self._heads = heads
            return self._heads

    async def _bounded(self, action: Any) -> Any:
        try:
            return await asyncio.wait_for(action, timeout=self.timeout_s)
        except (KafkaError, OSError, TimeoutError):
            await self.close()
            raise

    async def ping(self) -> None:
        """One metadata round trip to the cluster; raises if the broker does not answer."""
        admin, _ = await self._bounded(self._clients())
        await self._bounded(admin.describe_cluster())

    async def partitions(self, topics: list[str]) -> list[TopicPartition]:
        """Every partition of the topics that exist (an unknown topic has none)."""
        admin, _ = await self._bounded(self._clients())
        described = await self._bounded(admin.describe_topics(topics))
        for t in described:
            # e.g. LEADER_NOT_AVAILABLE on a topic being created: raise, so callers retry
            if t["error_code"] not in (0, UNKNOWN_TOPIC):
                raise for_code(t["error_code"])(t["topic"])
        return sorted(
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["error_code"] == 0
            for p in t["partitions"]
        )

    async def timestamp_types(self, topics: list[str]) -> dict[str, str | None]:
        """Each topic's `message.timestamp.type` (CreateTime or LogAppendTime); None where the
        broker does not say (no such topic, or this principal may not describe its configs)."""
        admin, _ = await self._bounded(self._clients())
        responses = await self._bounded(
            admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
            )
        )
        out: dict[str, str | None] = dict.fromkeys(topics)
        for response in responses:
            for error_code, _, _, name, configs in response.resources:
                if error_code == 0 and name in out:
                    out[name] = next(
                        (c[1] for c in configs if c[0] == "message.timestamp.type"), None
                    )
        return out

    async def partition_counts(self, topics: list[str]) -> dict[str, int | None]:
        """Partitions per topic; None for a topic the broker does not know."""
        admin, _ = await self._bounded(self._clients())
        described = await self._bounded(admin.describe_topics(topics))
        counts: dict[str, int | None] = dict.fromkeys(topics)
        for t in described:
            if t["error_code"] == 0 and t["topic"] in counts:
                counts[t["topic"]] = len(t["partitions"])
        return counts

    async def end_offsets(
        self, topics: list[str], *, open_transactions: bool = False
    ) -> dict[TopicPartition, int]:
        """Log-end offsets: the last stable offsets (as far as the worker can read), or with
        `open_transactions` the high watermarks, past records of transactions still open.
        A gate that waits for "everything that had arrived" needs the latter: a record in an
        open transaction has arrived, and the group commits past it only once it is decided."""
        partitions = await self.partitions(topics)
        if not partitions:
            return {}
        if open_transactions:
            consumer = AIOKafkaConsumer(
                **self._connection(), enable_auto_commit=False, isolation_level="read_uncommitted"
            )
            try:
                await self._bounded(consumer.start())
                highs: dict[TopicPartition, int] = await self._bounded(
                    consumer.end_offsets(partitions)
                )
            finally:
                await close_client(consumer)
            return highs
        _, consumer = await self._bounded(self._clients())
        ends: dict[TopicPartition, int] = await self._bounded(consumer.end_offsets(partitions))
        return ends

    async def committed_and_end(
        self, group: str, topics: list[str], *, open_transactions: bool = False
    ) -> Offsets:
        """(committed, end) per partition of `topics`; committed is None if never committed."""
        admin, _ = await self._bounded(self._clients())
        committed = await self._bounded(admin.list_consumer_group_offsets(group))
        ends = await self.end_offsets(topics, open_transactions=open_transactions)
        return {
            tp: (
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                end,
            )
            for tp, end in ends.items()
        }

    async def head_timestamps(
        self, heads: Heads, ends: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """Kafka timestamp (ms) of the first readable record at or after each start offset.

        One small fetch per partition, all in parallel. None: nothing readable before the end
        (e.g. only a transaction marker lies there), so no time lag; a partition still
        unanswered after `timeout_s` is left out.
        """
        if not heads:
            return {}
        try:
            consumer = await self._bounded(self._head_consumer())
            return await self._read_heads(consumer, heads, ends)
        except (KafkaError, OSError, TimeoutError):
            await self.close()
            raise

    async def _read_heads(
        self, consumer: AIOKafkaConsumer, heads: Heads, ends: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        consumer.assign(list(heads))
        try:
            for tp, offset in heads.items():
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            found: dict[TopicPartition, int | None] = {}
            deadline = time.monotonic() + self.timeout_s
            while (left := deadline - time.monotonic()) > 0:
                pending = [tp for tp in heads if tp not in found]
                if not pending:
                    break
                batches = await consumer.getmany(*pending, timeout_ms=int(min(left, 0.2) * 1000))
                for tp in pending:
                    if records := batches.get(tp):
                        found[tp] = records[0].timestamp
                        consumer.pause(tp)  # one record is all it needs
                    elif await consumer.position(tp) >= ends[tp]:
                        found[tp] = None  # read past the end without a record: markers only
                        consumer.pause(tp)
            return found
        finally:
            # Paused, not unassigned: no prefetch between refreshes, and aiokafka 0.14's fetch
            # task cannot be stopped while it is still dropping an assignment (stop() hangs).
            consumer.pause(*consumer.assignment())

    async def lag(self, group: str, topics: list[str], now_s: float | None = None) -> list[Row]:
        """Offset and time lag of every partition of `topics` for the whole group."""
        offsets = await self.committed_and_end(group, topics)
        lagging = {tp: c for tp, (c, end) in offsets.items() if end > (c or 0)}
        ends = {tp: end for tp, (_, end) in offsets.items()}
        stamps = await self.head_timestamps(lagging, ends)
        return lag_rows(offsets, stamps, time.time() if now_s is None else now_s)


async def committed_and_end(
    connection: dict[str, Any], group: str, topics: list[str], *, open_transactions: bool = False
) -> Offsets:
    """(committed, end) per partition of `topics`, read from the broker alone (one-shot)."""
    async with OffsetReader(connection) as reader:
        return await reader.committed_and_end(group, topics, open_transactions=open_transactions)


def lag_rows(
    offsets: Offsets, stamps_ms: Mapping[TopicPartition, int | None], now_s: float
) -> list[Row]:
    """One row per partition; a partition never committed lags by its whole end offset.

    `lag_seconds` is how long ago the oldest uncommitted record reached Kafka: 0 without lag
    or when only transaction markers lie before the end (stamp None), None when the record
    could not be read (no stamp).
    """
    rows = []
    for tp, (committed, end) in sorted(offsets.items()):
        lag = max(end - (committed or 0), 0)
        seconds: float | None = None
        if lag == 0 or (tp in stamps_ms and stamps_ms[tp] is None):
            seconds = 0.0
        elif (stamp := stamps_ms.get(tp)) is not None:
            seconds = round(max(now_s - stamp / 1000, 0.0), 3)
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": committed,
                "end": end,
                "lag": lag,
                "lag_seconds": seconds,
            }
        )
    return rows


def retriable_read(exc: BaseException) -> bool:
    """A broker error worth asking again: no coordinator or leader yet, a timeout, a
    connection that dropped."""
    return is_retriable(exc) or isinstance(exc, KafkaTimeoutError)


async def retrying(
    read: Callable[[], Awaitable[T]],
    retry_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`read()`, asked again after a retriable error until `retry_s` have passed."""
    deadline = clock() + retry_s
    delay_s = 0.2
    while True:
        try:
            return await read()
        except Exception as exc:
            left = deadline - clock()
            if not retriable_read(exc) or left <= 0:
                raise
            await sleep(min(delay_s, left))
            delay_s = min(delay_s * 2, 2.0)


async def group_lag(settings: Settings, retry_s: float | None = None) -> dict[str, Any]:
    """Offset and time lag per input partition and in total, for `billing-worker lag`.

    A fresh broker answers the first group request with COORDINATOR_NOT_AVAILABLE while it
    creates its offsets topic: retriable errors are retried for `retry_s` (LAG_RETRY_S).
    """
    topics = [settings.topic_usage, settings.topic_account_events]
    async with OffsetReader(kafka_client_args(settings)) as reader:
        rows = await retrying(
            lambda: reader.lag(settings.consumer_group, topics),
            LAG_RETRY_S if retry_s is None else retry_s,
        )
    return {
        "group": settings.consumer_group,
        "partitions": rows,
        "total": sum(r["lag"] for r in rows),
    }
