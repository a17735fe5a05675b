"""Producing the scenario in waves, and reading whole topics back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from chaos.scenario import Item


@dataclass(frozen=True)
class Topics:
    usage: str
    account: str
    reminders: str
    invoices: str
    dlq: str
    balances: str
    input_partitions: int = 6
    output_partitions: int = 3

    def of(self, item: Item) -> str:
        return self.usage if item.source == "usage" else self.account


# Inputs: the broker stamps each record's arrival, which decides lateness (SPEC §2).
INPUT_TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}


async def create_topics(bootstrap: str, topics: Topics, *, inputs: bool = True) -> None:
    """The run's topics; without `inputs`, only the outputs (a second group's)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        input_topics = (topics.usage, topics.account) if inputs else ()
        await admin.create_topics(
            [
                NewTopic(t, topics.input_partitions, 1, topic_configs=INPUT_TOPIC_CONFIG)
                for t in input_topics
            ]
            + [
                NewTopic(t, topics.output_partitions, 1)
                for t in (topics.reminders, topics.invoices, topics.dlq)
            ]
            + [
                NewTopic(
                    topics.balances,
                    topics.output_partitions,
                    1,
                    topic_configs={"cleanup.policy": "compact"},
                )
            ]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topics: Topics, *, inputs: bool = True) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(
            ([topics.usage, topics.account] if inputs else [])
            + [topics.reminders, topics.invoices, topics.dlq, topics.balances]
        )
    finally:
        await admin.close()


def waves(items: Sequence[Item], max_size: int = 2000) -> list[list[Item]]:
    """Split the production order so no wave holds one account's records on both topics.

    A wave is sent and fully acknowledged before the next one starts. Within a wave the
    broker may append the two topics in any order, but then each account only has records on
    one of them; across waves every earlier record is in the log before a later one can be
    read, so the worker's caught-up check sees the other topic complete. The first record
    after the close gate starts a wave of its own.
    """
    gate = next((n for n, item in enumerate(items) if item.after_close), -1)
    out: list[list[Item]] = []
    current: list[Item] = []
    sources: dict[str | None, str] = {}
    for n, item in enumerate(items):
        clash = sources.get(item.key, item.source) != item.source
        if current and (clash or len(current) >= max_size or n == gate):
            out.append(current)
            current, sources = [], {}
        current.append(item)
        sources[item.key] = item.source
    if current:
        out.append(current)
    return out


class WaveProducer:
    """Sends waves with acks from all replicas; a failed wave is sent again whole."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=15_000,
            max_batch_size=256 * 1024,
            max_request_size=1024 * 1024,  # the hostile records' largest value fits
        )
        self.topics = topics
        self.resent_waves = 0

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, wave: Sequence[Item]) -> None:
        while True:
            try:
                futures = [
                    await self.producer.send(
                        self.topics.of(item),
                        item.value,
                        key=None if item.key is None else item.key.encode(),
                        partition=item.partition,
                    )
                    for item in wave
                ]
                await asyncio.gather(*futures)
                return
            except (KafkaError, OSError, TimeoutError):
                # Some records may be in the log already: the read-back model counts them.
                self.resent_waves += 1
                await asyncio.sleep(1.0)


async def end_offsets(
    bootstrap: str, tps: list[TopicPartition], isolation_level: str = "read_committed"
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


Logged = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


async def read_all(
    bootstrap: str,
    topic_partitions: dict[str, int],
    timeout_s: float = 300.0,
    isolation_level: str = "read_committed",
    arrivals: dict[tuple[str, int, int], int] | None = None,
) -> dict[str, list[Logged]]:
    """Every record of the topics, as (partition, offset, key, value), in offset order.

    read_committed (what the output topics' consumers are told to use) skips the messages of
    aborted transactions; read_uncommitted returns them too. `arrivals`, if given, receives
    each record's Kafka timestamp (ms) by (topic, partition, offset).
    """
    tps = [TopicPartition(t, p) for t, n in topic_partitions.items() for p in range(n)]
    # A separate consumer: on aiokafka 0.14, end_offsets() on the reading consumer can leave
    # it fetching nothing after the seek.
    ends = await end_offsets(bootstrap, tps, isolation_level)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: dict[str, list[Logged]] = {t: [] for t in topic_partitions}
        waiting = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {sorted(map(str, waiting))} to the end")
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, messages in batch.items():
                out[tp.topic] += [(m.partition, m.offset, m.key, m.value) for m in messages]
                if arrivals is not None:
                    arrivals.update(
                        {(tp.topic, m.partition, m.offset): m.timestamp for m in messages}
                    )
            # By position, not by the last record: a transactional log ends with a commit
            # marker, and aborted messages are skipped without being returned.
            waiting = {tp for tp in waiting if await consumer.position(tp) < ends[tp]}
        for records in out.values():
            records.sort(key=lambda r: (r[0], r[1]))
        return out
    finally:
        await consumer.stop()
