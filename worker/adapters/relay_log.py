"""What the output log already holds: the highest relay sequence number committed to it, and
which database published the last messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from worker.adapters.kafka_connection import close_client

SEQ_HEADER = "outbox_seq"
# The publishing database's stamp (migration 0010); messages from before it carry none.
STAMP_HEADER = "outbox_db"
_FIRST_WINDOW = 64


@dataclass(frozen=True)
class Tail:
    """The last numbered message committed to each partition read, summed up."""

    highest_seq: int = 0
    # Stamp -> the highest sequence number a last message with that stamp carries.
    stamps: dict[str, int] = field(default_factory=dict)

    def foreign(self, own: str) -> dict[str, int]:
        """Stamps other than `own` on last messages (messages without one are not counted)."""
        return {stamp: seq for stamp, seq in self.stamps.items() if stamp != own}


def seq_of(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The relay sequence number a message carries (None: not published by this relay)."""
    for name, value in headers:
        if name == SEQ_HEADER:
            try:
                return int(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def stamp_of(headers: Iterable[tuple[str, bytes]]) -> str | None:
    """The stamp of the database that published a message (None: none, or not readable)."""
    for name, value in headers:
        if name == STAMP_HEADER:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def mismatch(tail: Tail, stamp: str, numbered: int) -> str | None:
    """Why this database must not trust the output log `tail` (None: it may).

    `numbered` is the highest sequence number this database has given out. A log holding a
    higher one, or last messages stamped by another database, would have recovery mark rows
    sent that were never published.
    """
    foreign = tail.foreign(stamp)
    if foreign:
        other, seq = max(foreign.items(), key=lambda item: item[1])
        return (
            f"the output topics hold messages published from another database (stamp {other},"
            f" outbox_seq up to {seq}), not from this one (stamp {stamp}): point"
            " BILLING_DATABASE_URL at the database these topics belong to, or give this one"
            " topics of its own (BILLING_TOPIC_*)"
        )
    if tail.highest_seq > numbered:
        return (
            f"the output topics hold outbox_seq {tail.highest_seq}, but this database has"
            f" numbered only up to {numbered}: it was restored from a backup taken before"
            " those messages were published; recovery would mark rows that were never"
            " published as sent. Run `billing-worker outbox adopt-log` to number on after"
            " the log (README: Restoring the database)"
        )
    return None


async def partitions_of(client: AIOKafkaClient, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of those of `topics` that exist, from fresh metadata."""
    cluster = await client.fetch_all_metadata()
    return [
        TopicPartition(topic, p)
        for topic in sorted(set(topics))
        for p in sorted(cluster.partitions_for_topic(topic) or ())
    ]


async def _consumer(connection: dict[str, Any], client_id: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **connection,
        client_id=client_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
    except BaseException:
        await close_client(consumer)
        raise
    # aiokafka 0.14: stop() right after start() re-raises the cancellation of a background
    # task that never ran; one turn of the loop lets it start.
    await asyncio.sleep(0)
    return consumer


async def committed_tail(
    connection: dict[str, Any],
    client_id: str,
    tps: list[TopicPartition],
    timeout_s: float = 60.0,
) -> Tail:
    """The last numbered committed message of each partition of `tps`, summed up.

    Each partition receives messages in sequence order, so its last committed message holds
    its highest number; the tail may be aborted messages and markers, so the window read
    before the last stable offset widens until a committed message (or the log start) is met.
    """
    deadline = time.monotonic() + timeout_s
    if not tps:
        return Tail()
    # A separate consumer for the offsets: on aiokafka 0.14 end_offsets() on the reading
    # consumer can leave it fetching nothing after a seek.
    probe = await _consumer(connection, client_id)
    try:
        stable = await probe.end_offsets(tps)  # read_committed: the last stable offsets
        starts = await probe.beginning_offsets(tps)
    finally:
        await close_client(probe)
    todo = [tp for tp in tps if stable[tp] > starts[tp]]
    if not todo:
        return Tail()
    reader = await _consumer(connection, client_id)
    try:
        highest = 0
        stamps: dict[str, int] = {}
        window = _FIRST_WINDOW
        while todo:
            found = await _last_seqs(reader, todo, stable, starts, window, deadline)
            for seq, stamp in found.values():
                highest = max(highest, seq)
                if stamp is not None:
                    stamps[stamp] = max(stamps.get(stamp, 0), seq)
            todo = [tp for tp in todo if tp not in found and stable[tp] - window > starts[tp]]
            window *= 8
        return Tail(highest, stamps)
    finally:
        await close_client(reader)


async def _last_seqs(
    reader: AIOKafkaConsumer,
    tps: list[TopicPartition],
    stable: dict[TopicPartition, int],
    starts: dict[TopicPartition, int],
    window: int,
    deadline: float,
) -> dict[TopicPartition, tuple[int, str | None]]:
    """Read `window` offsets before each partition's last stable offset; the last number seen
    and the stamp beside it."""
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, max(starts[tp], stable[tp] - window))
    found: dict[TopicPartition, tuple[int, str | None]] = {}
    waiting = set(tps)
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read the tail of {sorted(map(str, waiting))}")
        batch = await reader.getmany(*waiting, timeout_ms=500)
        for tp, messages in batch.items():
            for message in messages:
                if message.offset >= stable[tp]:
                    break
                seq = seq_of(message.headers)
                if seq is not None:
                    found[tp] = (seq, stamp_of(message.headers))
        # Aborted messages and transaction markers are skipped, not returned: the position
        # still moves past them.
        waiting = {tp for tp in waiting if await reader.position(tp) < stable[tp]}
    return found
