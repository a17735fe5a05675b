"""Rows whose (account_id, partition) no account has: what the dropped foreign keys guarded.

Migration 0009 keeps foreign keys only where rows are rare (lots, invoices); ledger entries,
postpay usage and daily usage are written by a unit of work only for the accounts it has
locked, with the partition read from them. The checks after a run (tests, bench, chaos) count
what that leaves, which must be nothing.
"""

from __future__ import annotations

import asyncpg

ACCOUNT_OWNED = (
    "lots",
    "ledger_entries",
    "postpay_usage",
    "invoices",
    "usage_daily",
    "processed_events",
)


async def stray_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Per table, the rows that name no account of their partition (only tables that have any)."""
    counts: dict[str, int] = {}
    if not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'accounts' AND column_name = 'partition')"
    ):
        return counts  # before migration 0009 (e.g. an older worker's database in an A/B)
    for table in ACCOUNT_OWNED:
        count = await conn.fetchval(
            f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM accounts a"
            " WHERE a.account_id = t.account_id AND a.partition = t.partition)"
        )
        if count:
            counts[table] = int(count)
    return counts
