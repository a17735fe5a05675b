"""Read-only PostgreSQL queries behind /metrics, /ready and the demo's live view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Rows waiting for the relay; parked ones wait for a person and are counted apart. Two
# counts, so that each reads its own partial index.
_BACKLOG = """
SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_s,
       (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NOT NULL) AS parked
FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL
"""
_BALANCES = """
SELECT account_id, plan, balance_jpy, overdraft_jpy, postpay_due_jpy FROM accounts
WHERE account_id = ANY($1::text[]) ORDER BY account_id
"""


async def ping(pool: asyncpg.Pool, timeout_s: float) -> None:
    """One round trip through the pool; raises when PostgreSQL does not answer."""
    async with pool.acquire(timeout=timeout_s) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout_s)


class Backlog(NamedTuple):
    """Outbox rows the relay has still to publish, and those parked."""

    unsent: int
    oldest_s: float  # age of the oldest of `unsent`; 0 when none
    parked: int


async def outbox_backlog(
    db: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy, timeout_s: float = 5.0
) -> Backlog:
    """Unsent outbox rows not parked, the age in seconds of the oldest one, parked rows."""
    row = await db.fetchrow(_BACKLOG, timeout=timeout_s)
    assert row is not None
    return Backlog(int(row["n"]), float(row["oldest_s"]), int(row["parked"]))


async def balances(
    conn: asyncpg.Connection | asyncpg.Pool, account_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Plan and money columns of the given accounts that exist."""
    return list(await conn.fetch(_BALANCES, list(account_ids)))
