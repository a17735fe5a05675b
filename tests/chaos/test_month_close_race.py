"""Found by designing the chaos run: usage committed while a month is being closed.

The close reads the month's uninvoiced postpay usage, builds the invoices from it, then links
that usage to them. A late usage event of the same month committed by the stream in between
must stay uninvoiced (it belongs on the next invoice): linking it would mark it billed while
no invoice line carries it, and its amount would never be invoiced.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from worker.adapters.postgres import PgStore
from worker.domain.invoicing import build_invoice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_USAGE = """
INSERT INTO postpay_usage (event_id, account_id, period, occurred_at, country, unit_price_jpy,
                           segments, amount_jpy, from_lots_jpy, partition)
VALUES ($1, $2, $3, $4, 'JP', 10, $5, $6, 0, 0)
"""


async def test_usage_committed_during_a_close_is_left_for_the_next_invoice(
    database_url: str,
) -> None:
    # Month closes are global to the session's database: a month of the 1900s of its own.
    period = f"19{random.randrange(10, 70)}-{random.randrange(1, 13):02d}"
    at = datetime.fromisoformat(f"{period}-15T12:00:00+00:00")
    account = f"close-race-{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=3)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO accounts (account_id, plan, partition) VALUES ($1, 'postpay', 0)",
                account,
            )
            await conn.execute(_USAGE, f"{account}-1", account, period, at, 3, 30)
        async with PgStore(pool).close_unit_of_work() as uow:
            assert await uow.claim_month(period)
            usage = [u for u in await uow.uninvoiced_usage(period) if u.account_id == account]
            # The stream commits a late usage event of the same month right now.
            async with pool.acquire() as stream:
                await stream.execute(_USAGE, f"{account}-late", account, period, at, 5, 50)
            invoice = build_invoice(account, period, usage, UTC)
            assert invoice is not None
            assert invoice.total_jpy == 30
            await uow.save_invoices(period, [invoice], datetime.now(UTC), [])
        async with pool.acquire() as conn:
            links = dict(
                await conn.fetch(
                    "SELECT event_id, invoice_id FROM postpay_usage WHERE account_id = $1", account
                )
            )
    finally:
        await pool.close()

    assert links == {f"{account}-1": invoice.invoice_id, f"{account}-late": None}
