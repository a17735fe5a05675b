"""What the output log already holds: the highest relay sequence number committed to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.adapters.kafka_connection import close_client

SEQ_HEADER = "outbox_seq"
_FIRST_WINDOW = 64


def seq_of(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The relay sequence number a message carries (None: not published by this relay)."""
    for name, value in headers:
        if name == SEQ_HEADER:
            try:
                return int(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
    return None


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


async def highest_committed_seq(
    connection: dict[str, Any],
    client_id: str,
    tps: list[TopicPartition],
    timeout_s: float = 60.0,
) -> int:
    """The largest sequence among the last committed messages of the partitions `tps`.

    Each partition receives messages in sequence order, so its last committed message holds
    its highest number; the tail may be aborted messages and markers, so the window read
    before the last stable offset widens until a committed message (or the log start) is met.
    0 when none carries a number.
    """
    deadline = time.monotonic() + timeout_s
    if not tps:
        return 0
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
        return 0
    reader = await _consumer(connection, client_id)
    try:
        highest = 0
        window = _FIRST_WINDOW
        while todo:
            found = await _last_seqs(reader, todo, stable, starts, window, deadline)
            for seq in found.values():
                highest = max(highest, seq)
            todo = [tp for tp in todo if tp not in found and stable[tp] - window > starts[tp]]
            window *= 8
        return highest
    finally:
        await close_client(reader)


async def _last_seqs(
    reader: AIOKafkaConsumer,
    tps: list[TopicPartition],
    stable: dict[TopicPartition, int],
    starts: dict[TopicPartition, int],
    window: int,
    deadline: float,
) -> dict[TopicPartition, int]:
    """Read `window` offsets before each partition's last stable offset; the last number seen."""
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, max(starts[tp], stable[tp] - window))
    found: dict[TopicPartition, int] = {}
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
                    found[tp] = seq
        # Aborted messages and transaction markers are skipped, not returned: the position
        # still moves past them.
        waiting = {tp for tp in waiting if await reader.position(tp) < stable[tp]}
    return found
