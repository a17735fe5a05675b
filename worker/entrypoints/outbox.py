"""`billing-worker outbox`: parked rows (list, release) and the output log after a restore."""

from __future__ import annotations

from typing import Any

from worker.adapters import parked
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.reach import connect_database, reach_kafka
from worker.adapters.relay import RELAY_LOCK_KEY, build_producer
from worker.adapters.relay_log import Tail, committed_tail, partitions_of
from worker.config import Settings
from worker.errors import Failure, OutputLogMismatch

_NUMBERED = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_relay_seq"


async def list_parked(settings: Settings) -> list[dict[str, Any]]:
    """Every parked row, oldest first, with its reason; payloads left out."""
    conn = await connect_database(settings)
    try:
        return await parked.parked_rows(conn)
    finally:
        await conn.close()


def parked_table(rows: list[dict[str, Any]]) -> str:
    """The rows as ops read them: one line each, then the count."""
    lines = [
        f"{r['id']}  {r['failed_at']:%Y-%m-%dT%H:%M:%SZ}  {r['topic']}  {r['message_id']}"
        f"  {r['size']} bytes  {r['failure']}"
        for r in rows
    ]
    return "\n".join([*lines, f"parked: {len(rows)}"])


async def release_parked(settings: Settings, ids: list[int] | None) -> parked.Released:
    """Hand parked rows back to the relay (all of them with None)."""
    conn = await connect_database(settings)
    try:
        return await parked.release(conn, ids, {settings.topic_balances})
    finally:
        await conn.close()


async def adopt_log(settings: Settings) -> str:
    """After a restore: number on after the highest outbox_seq in the output log.

    Held under the relay's advisory lock, so no relay numbers rows meanwhile. Refuses a log
    stamped by another database: adopting that would still mark this one's rows sent.
    """
    conn = await connect_database(settings)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
            raise Failure(
                "a relay is running on this database: stop every worker, then run it again",
                error_code="relay_running",
            )
        stamp = await conn.fetchval("SELECT stamp::text FROM database_stamp")
        tail = await _tail(settings)
        foreign = tail.foreign(stamp)
        if foreign:
            raise OutputLogMismatch(
                f"the output topics hold messages of another database (stamp"
                f" {', '.join(sorted(foreign))}), not of this one (stamp {stamp}): adopting"
                " them cannot make recovery exact; give this database topics of its own"
            )
        numbered = await conn.fetchval(_NUMBERED)
        if tail.highest_seq <= numbered:
            return (
                f"nothing to adopt: the output log's highest outbox_seq is {tail.highest_seq},"
                f" this database has numbered up to {numbered}"
            )
        await conn.execute("SELECT setval('outbox_relay_seq', $1)", tail.highest_seq)
        in_doubt = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"
            " AND relay_seq IS NOT NULL"
        )
        return (
            f"numbering continues after outbox_seq {tail.highest_seq} (this database had"
            f" reached {numbered}); {in_doubt} row(s) numbered before the backup will be marked"
            " sent by the relay, as the log holds them"
        )
    finally:
        await conn.close()  # ending the session releases the advisory lock


async def _tail(settings: Settings) -> Tail:
    """The last numbered message of every partition of the output topics."""
    producer = build_producer(kafka_client_args(settings), settings.client_id + "-adopt-log")
    await reach_kafka(settings, producer.start)
    try:
        tps = await partitions_of(producer.client, settings.output_topics)
    finally:
        await producer.stop()
    return await committed_tail(kafka_client_args(settings), settings.client_id + "-adopt-log", tps)
