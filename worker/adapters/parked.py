"""Parked outbox rows (the broker refused them): list them, release them to the relay again."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from worker.errors import BadArgument

_LIST = """
SELECT id, message_id, topic, length(payload) + coalesce(length(key), 0) AS size,
       created_at, failed_at, failure
FROM outbox WHERE sent_at IS NULL AND failed_at IS NOT NULL ORDER BY id
"""
_CHOSEN = """
SELECT id, message_id, topic, key FROM outbox
WHERE sent_at IS NULL AND failed_at IS NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1))
ORDER BY id FOR UPDATE
"""
# A newer snapshot of the same account, published or on its way: on a compacted topic the
# parked one would replace it as the account's state if it were sent now.
_NEWER_SNAPSHOT = """
SELECT message_id FROM outbox
WHERE topic = $1 AND key IS NOT DISTINCT FROM $2 AND id > $3 AND failed_at IS NULL
ORDER BY id DESC LIMIT 1
"""
_SUPERSEDED = """
UPDATE outbox SET sent_at = now(), failure = failure || $2 WHERE id = $1
"""
# No number: the relay gives it a new one, above every number already in the log, so
# recovery never takes it for published.
_RELEASE = """
UPDATE outbox SET failed_at = NULL, failure = NULL, relay_seq = NULL WHERE id = ANY($1::bigint[])
"""


@dataclass(frozen=True)
class Released:
    """What a release did: rows handed back to the relay, and snapshots not worth sending."""

    released: list[str]
    superseded: list[tuple[str, str]]  # (message_id, the newer snapshot's message_id)


async def parked_rows(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """Every parked row, oldest first, without its payload."""
    return [dict(row) for row in await conn.fetch(_LIST)]


async def release(
    conn: asyncpg.Connection, ids: list[int] | None, compacted_topics: set[str]
) -> Released:
    """Hand parked rows (`ids`, or all with None) back to the relay, in one transaction.

    A parked message of a compacted topic (the balance feed) that a newer one of the same key
    has superseded is not sent: it would replace the newer state. It is closed instead, with
    `sent_at` set and the reason appended to its `failure`, so it is listed nowhere again.
    """
    async with conn.transaction():
        chosen = await conn.fetch(_CHOSEN, ids)
        unknown = sorted(set(ids or ()) - {row["id"] for row in chosen})
        if unknown:
            raise BadArgument(
                f"not parked: {', '.join(map(str, unknown))} (see `billing-worker outbox"
                " parked`); nothing released"
            )
        superseded: list[tuple[str, str]] = []
        released: list[asyncpg.Record] = []
        for row in chosen:
            newer = None
            if row["topic"] in compacted_topics:
                newer = await conn.fetchval(_NEWER_SNAPSHOT, row["topic"], row["key"], row["id"])
            if newer is None:
                released.append(row)
                continue
            note = f"; not sent when released: superseded by {newer}"
            await conn.execute(_SUPERSEDED, row["id"], note)
            superseded.append((row["message_id"], newer))
        await conn.execute(_RELEASE, [row["id"] for row in released])
    return Released([row["message_id"] for row in released], superseded)
