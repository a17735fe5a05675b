"""Read-only PostgreSQL queries behind /metrics, /ready and the demo's live view."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

_BACKLOG = """
SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_s
FROM outbox WHERE sent_at IS NULL
"""
_BALANCES = """
SELECT account_id, plan, balance_jpy, overdraft_jpy, postpay_due_jpy FROM accounts
WHERE account_id = ANY($1::text[]) ORDER BY account_id
"""


async def ping(pool: asyncpg.Pool, timeout_s: float) -> None:
    """One round trip through the pool; raises when PostgreSQL does not answer."""
    async with pool.acquire(timeout=timeout_s) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout_s)


async def outbox_backlog(pool: asyncpg.Pool, timeout_s: float = 5.0) -> tuple[int, float]:
    """Unsent outbox rows and the age in seconds of the oldest one (0 when none)."""
    row = await pool.fetchrow(_BACKLOG, timeout=timeout_s)
    assert row is not None
    return int(row["n"]), float(row["oldest_s"])


async def balances(
    conn: asyncpg.Connection | asyncpg.Pool, account_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Plan and money columns of the given accounts that exist."""
    return list(await conn.fetch(_BALANCES, list(account_ids)))
