"""Broker-side views: the group's committed offsets against the log-end offsets."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.adapters.kafka_connection import kafka_client_args
from worker.config import Settings

Offsets = dict[TopicPartition, tuple[int | None, int]]


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
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        async with self._opening:
            return await self._open()

    async def _open(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.close()
            admin = AIOKafkaAdminClient(
                **self.connection,
                client_id=self.client_id,
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            # read_committed: the end is the last stable offset, as far as the worker can read.
            consumer = AIOKafkaConsumer(
                **self.connection,
                client_id=self.client_id,
                enable_auto_commit=False,
                isolation_level="read_committed",
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await consumer.stop()
                await admin.close()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

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
        return sorted(
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["error_code"] == 0
            for p in t["partitions"]
        )

    async def partition_counts(self, topics: list[str]) -> dict[str, int | None]:
        """Partitions per topic; None for a topic the broker does not know."""
        admin, _ = await self._bounded(self._clients())
        described = await self._bounded(admin.describe_topics(topics))
        counts: dict[str, int | None] = dict.fromkeys(topics)
        for t in described:
            if t["error_code"] == 0 and t["topic"] in counts:
                counts[t["topic"]] = len(t["partitions"])
        return counts

    async def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
        partitions = await self.partitions(topics)
        if not partitions:
            return {}
        _, consumer = await self._bounded(self._clients())
        ends: dict[TopicPartition, int] = await self._bounded(consumer.end_offsets(partitions))
        return ends

    async def committed_and_end(self, group: str, topics: list[str]) -> Offsets:
        """(committed, end) per partition of `topics`; committed is None if never committed."""
        admin, _ = await self._bounded(self._clients())
        committed = await self._bounded(admin.list_consumer_group_offsets(group))
        ends = await self.end_offsets(topics)
        return {
            tp: (
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                end,
            )
            for tp, end in ends.items()
        }


async def committed_and_end(connection: dict[str, Any], group: str, topics: list[str]) -> Offsets:
    """(committed, end) per partition of `topics`, read from the broker alone (one-shot)."""
    async with OffsetReader(connection) as reader:
        return await reader.committed_and_end(group, topics)


def lag_rows(offsets: Offsets) -> list[dict[str, Any]]:
    """One row per partition; a partition never committed lags by its whole end offset."""
    return [
        {
            "topic": tp.topic,
            "partition": tp.partition,
            "committed": committed,
            "end": end,
            "lag": max(end - (committed or 0), 0),
        }
        for tp, (committed, end) in sorted(offsets.items())
    ]


async def group_lag(settings: Settings) -> dict[str, Any]:
    """Lag per input partition and in total, for `billing-worker lag`."""
    offsets = await committed_and_end(
        kafka_client_args(settings),
        settings.consumer_group,
        [settings.topic_usage, settings.topic_account_events],
    )
    rows = lag_rows(offsets)
    return {
        "group": settings.consumer_group,
        "partitions": rows,
        "total": sum(r["lag"] for r in rows),
    }
