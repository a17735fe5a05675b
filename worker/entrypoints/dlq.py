"""`billing-worker dlq replay`: send dead letters back to the topic they came from."""

from __future__ import annotations

from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from schemas import DeadLetter
from worker import logs
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.reach import reach_kafka
from worker.adapters.relay import build_producer
from worker.config import Settings

log = logs.get("worker.dlq")


async def replay(
    settings: Settings, error_codes: set[str], dry_run: bool, idle_ms: int = 2000
) -> Counter[str]:
    """Re-publish each dead letter's original bytes to its source topic, once per letter.

    The replay group's committed offsets remember what was replayed; replayed events are
    de-duplicated by `event_id` like any other delivery, so a replay never charges twice.
    """
    consumer = AIOKafkaConsumer(
        settings.topic_dlq,
        **kafka_client_args(settings),
        group_id=f"{settings.consumer_group}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = build_producer(kafka_client_args(settings), settings.client_id + "-replay")
    counts: Counter[str] = Counter()
    await reach_kafka(settings, consumer.start)
    try:
        await reach_kafka(settings, producer.start)
    except BaseException:
        await consumer.stop()
        raise
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=500)
            if not batch:
                return counts
            for messages in batch.values():
                for message in messages:
                    await _one(message.value, settings, producer, error_codes, dry_run, counts)
            if not dry_run:
                await producer.flush()
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


async def _one(
    value: bytes | None,
    settings: Settings,
    producer: AIOKafkaProducer,
    error_codes: set[str],
    dry_run: bool,
    counts: Counter[str],
) -> None:
    try:
        letter = DeadLetter.model_validate_json(value or b"")
    except ValidationError:
        counts["unreadable"] += 1
        return
    inputs = {settings.topic_usage, settings.topic_account_events}
    if letter.source_topic not in inputs or (error_codes and letter.error_code not in error_codes):
        counts["skipped"] += 1
        return
    if letter.payload_truncated:
        # Too large to carry whole: replay it from the source topic at source_offset.
        counts["truncated"] += 1
        return
    counts[f"replayed:{letter.error_code}"] += 1
    if not dry_run:
        key = None if letter.key is None else letter.key.encode()
        await producer.send(letter.source_topic, letter.original_payload(), key=key)
