"""`billing-worker dlq replay`: send dead letters back to the topic they came from."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas import DeadLetter
from worker import logs
from worker.adapters.kafka_connection import close_client, kafka_client_args
from worker.adapters.reach import reach_kafka
from worker.adapters.relay import build_producer
from worker.config import Settings

log = logs.get("worker.dlq")

# Enough for any record the broker accepts (its default limit is 1 MiB).
_FETCH_BYTES = 64 * 1024 * 1024


@dataclass
class ReplayReport:
    """What a replay did (or, with --dry-run, would do)."""

    replayed: Counter[str] = field(default_factory=Counter)  # by error code
    skipped: Counter[str] = field(default_factory=Counter)  # by why
    refused: list[str] = field(default_factory=list)  # letters that need a person, and why

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would replay" if dry_run else "replayed"
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(self.replayed.items()))
        by_why = ", ".join(f"{why}: {n}" for why, n in sorted(self.skipped.items()))
        return [
            f"{verb} {sum(self.replayed.values())}" + (f" ({by_code})" if by_code else ""),
            f"skipped {sum(self.skipped.values())}" + (f" ({by_why})" if by_why else ""),
            *(f"refused: {why}" for why in self.refused),
        ]


async def replay(
    settings: Settings, error_codes: set[str], dry_run: bool, stall_s: float = 30.0
) -> ReplayReport:
    """Re-publish the dead letters present when it starts, each once, with its original bytes.

    The dead-letter topic's end offsets are noted first and the replay stops there, so a
    replayed record that fails again (and is dead-lettered again) is not read again. The
    replay group's committed offsets remember what was replayed; replayed events are
    de-duplicated by `event_id` like any other delivery, so a replay never charges twice.
    """
    consumer = AIOKafkaConsumer(
        **kafka_client_args(settings),
        group_id=f"{settings.consumer_group}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=_FETCH_BYTES,
        fetch_max_bytes=_FETCH_BYTES,
    )
    producer = build_producer(kafka_client_args(settings), settings.client_id + "-replay")
    report = ReplayReport()
    try:
        await reach_kafka(settings, consumer.start)
        await reach_kafka(settings, producer.start)
        partitions = await _partitions(consumer, settings.topic_dlq)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        left = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        progress_at = time.monotonic()
        while left:
            if time.monotonic() - progress_at > stall_s:
                report.refused.append(f"stopped: no progress for {stall_s:.0f} s towards {ends}")
                break
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=500)
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset >= ends[tp]:
                        break  # arrived after the replay started: left for the next replay
                    progress_at = time.monotonic()
                    await _one(message.value, settings, producer, error_codes, dry_run, report)
            if not dry_run:
                await producer.flush()
                done = {tp: min(await consumer.position(tp), ends[tp]) for tp in partitions}
                await consumer.commit(done)
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        return report
    finally:
        try:
            await close_client(producer)
        finally:
            await close_client(consumer)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _one(
    value: bytes | None,
    settings: Settings,
    producer: AIOKafkaProducer,
    error_codes: set[str],
    dry_run: bool,
    report: ReplayReport,
) -> None:
    try:
        letter = DeadLetter.model_validate_json(value or b"")
    except ValidationError:
        report.skipped["unreadable"] += 1
        return
    inputs = {settings.topic_usage, settings.topic_account_events}
    if letter.source_topic not in inputs:
        report.skipped["other_topic"] += 1
        return
    if error_codes and letter.error_code not in error_codes:
        report.skipped["other_error_code"] += 1
        return
    payload = letter.original_payload()
    if letter.payload_truncated:
        # Too large to carry whole: the whole value is read again at its source position.
        whole = await _refetch(settings, letter)
        if whole is None:
            where = f"{letter.source_topic}/{letter.source_partition}/{letter.source_offset}"
            report.refused.append(
                f"{where}: the dead letter holds only the first {len(payload)} of "
                f"{letter.payload_size} bytes and the source record is no longer readable; "
                "not replayed"
            )
            return
        payload = whole
    report.replayed[letter.error_code] += 1
    if not dry_run:
        await producer.send(letter.source_topic, payload, key=letter.original_key())


async def _refetch(settings: Settings, letter: DeadLetter, timeout_s: float = 10.0) -> bytes | None:
    """The source record's whole value, if it is still there and matches the letter."""
    consumer = AIOKafkaConsumer(
        **kafka_client_args(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=_FETCH_BYTES,
        fetch_max_bytes=_FETCH_BYTES,
    )
    try:
        await consumer.start()
        tp = TopicPartition(letter.source_topic, letter.source_partition)
        consumer.assign([tp])
        consumer.seek(tp, letter.source_offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for message in batch.get(tp, []):
                value = message.value or b""
                same = (
                    message.offset == letter.source_offset
                    and len(value) == letter.payload_size
                    and value.startswith(letter.original_payload())
                )
                return value if same else None
        return None
    finally:
        await close_client(consumer)
