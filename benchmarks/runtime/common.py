"""Shared helpers for the stream-runtime benchmark (ADR 0001).

Everything here talks to the local broker started by ``scripts/services``.
"""

from __future__ import annotations

import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

BOOTSTRAP = os.environ.get("ADR_BOOTSTRAP", "127.0.0.1:19092")
DEFAULT_TOPIC = "adr-bench"
PARTITIONS = 6


async def ensure_topic(topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        existing = await admin.list_topics()
        if topic not in existing:
            await admin.create_topics(
                [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
            )
            # wait until metadata shows the topic
            for _ in range(50):
                if topic in await admin.list_topics():
                    break
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_topic(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            await admin.delete_topics([topic])
    finally:
        await admin.close()


async def committed_offsets(group: str, topic: str) -> dict[int, int]:
    """Committed offsets of ``group`` on ``topic`` (partition -> offset).

    Uses a consumer's ``committed()`` without joining the group, so it works
    while (or after) the group member is dead.
    """
    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if parts is None:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        out: dict[int, int] = {}
        for p in sorted(parts):
            off = await c.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        await c.stop()


async def end_offsets(topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if parts is None:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        eo = await c.end_offsets(tps)
        return {tp.partition: off for tp, off in eo.items()}
    finally:
        await c.stop()


class OffsetDB:
    """The emulated "database": an append-only, fsync'ed journal.

    ``begin(batch_no)`` is written when the batch's transaction starts,
    ``commit(batch_no, {partition: next_offset})`` when it commits.  The
    product stores the next offset per partition in the same PostgreSQL
    transaction as the ledger change; this file plays that role.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)

    def begin(self, batch_no: int) -> None:
        self._write(f"B {batch_no} {time.time():.6f}")

    def commit(self, batch_no: int, offsets: dict[int, int]) -> None:
        body = ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))
        self._write(f"C {batch_no} {time.time():.6f} {body}")


def read_offset_db(path: str):
    """Return (db_offsets, mid_batch, n_commits) from an OffsetDB journal."""
    db: dict[int, int] = {}
    last_kind = None
    n_commits = 0
    with open(path) as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn write: the transaction did not commit
            parts = line.split()
            last_kind = parts[0]
            if parts[0] == "C":
                n_commits += 1
                if len(parts) > 3:
                    for item in parts[3].split(","):
                        p, o = item.split(":")
                        db[int(p)] = max(db.get(int(p), 0), int(o))
    return db, last_kind == "B", n_commits
