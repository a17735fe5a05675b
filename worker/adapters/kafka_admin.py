"""Broker-side views: the group's committed offsets against the log-end offsets."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config import Settings


async def committed_and_end(
    bootstrap: str, group: str, topics: list[str]
) -> dict[TopicPartition, tuple[int | None, int]]:
    """(committed, end) per partition of `topics`, read from the broker alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic)
                            or await _partitions(consumer, topic))
        ]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    return {
        tp: (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
             ends[tp])
        for tp in partitions
    }


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
    return consumer.partitions_for_topic(topic) or set()


async def group_lag(settings: Settings) -> dict[str, Any]:
    """Lag per input partition and in total; a partition never committed lags by its end."""
    offsets = await committed_and_end(
        settings.kafka_bootstrap_servers, settings.consumer_group,
        [settings.topic_usage, settings.topic_account_events])
    rows = [
        {"topic": tp.topic, "partition": tp.partition, "committed": committed, "end": end,
         "lag": end - (committed or 0)}
        for tp, (committed, end) in sorted(offsets.items())
    ]
    return {"group": settings.consumer_group, "partitions": rows,
            "total": sum(r["lag"] for r in rows)}
