"""Two month closes running at once (the timer's and one by hand) must not bill one usage twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from tests.waiting import wait_until
from worker.adapters.postgres import PgCloseUnitOfWork, PgStore
from worker.adapters.wire import Encoder
from worker.config import Settings
from worker.service.invoicing import close_month

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKYO = ZoneInfo("Asia/Tokyo")


class _Paused:
    """A close unit of work that stops after reading the usage until told to go on."""

    def __init__(self, uow: PgCloseUnitOfWork, read: asyncio.Event, go: asyncio.Event) -> None:
        self.uow, self.read, self.go = uow, read, go

    async def claim_month(self, period: str) -> bool:
        return await self.uow.claim_month(period)

    async def uninvoiced_usage(self, period: str):  # type: ignore[no-untyped-def]
        usage = await self.uow.uninvoiced_usage(period)
        self.read.set()
        await self.go.wait()
        return usage

    async def save_invoices(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await self.uow.save_invoices(*args, **kwargs)


async def test_concurrent_closes_of_two_months_put_each_usage_on_one_invoice(
    settings: Settings, unique: str
) -> None:
    year = 1100 + int(unique, 16) % 700  # months no other test closes
    earlier, later = f"{year:04d}-01", f"{year:04d}-02"
    account = f"acc-{unique}"
    pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=4)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO accounts (account_id, plan, partition) VALUES ($1, 'postpay', 0)",
                account,
            )
            await conn.execute(
                "INSERT INTO postpay_usage (event_id, account_id, period, occurred_at, country,"
                " unit_price_jpy, segments, amount_jpy, from_lots_jpy, partition)"
                " VALUES ($1, $2, $3, $4, 'JP', 10, 1, 10, 0, 0)",
                f"u-{unique}",
                account,
                earlier,
                datetime(year, 1, 15, tzinfo=UTC),
            )
        store = PgStore(pool)
        encoder = Encoder("r", "i", "d", "b")
        now = datetime.now(UTC)
        read, go = asyncio.Event(), asyncio.Event()

        async def close_later() -> None:  # the timer closing the latest month
            async with store.close_unit_of_work() as uow:
                await close_month(_Paused(uow, read, go), later, now, TOKYO, encoder.invoice)

        async def close_earlier() -> None:  # ops closing a skipped month by hand
            await read.wait()
            async with store.close_unit_of_work() as uow:
                await close_month(uow, earlier, now, TOKYO, encoder.invoice)

        async def release_later_once_earlier_waits() -> None:
            # The second close must reach the point where it would read the same usage while
            # the first is still open; let the first go on once the second waits on a lock.
            await read.wait()
            async with pool.acquire() as probe:

                async def someone_waits_on_a_lock() -> bool:
                    waiting = await probe.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    return bool(waiting)

                await wait_until(someone_waits_on_a_lock, 5, "the earlier close to wait on a lock")
            go.set()

        await asyncio.gather(close_later(), close_earlier(), release_later_once_earlier_waits())
        async with pool.acquire() as conn:
            invoices = await conn.fetch(
                "SELECT invoice_id, total_jpy FROM invoices WHERE account_id = $1 ORDER BY 1",
                account,
            )
            published = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = 'i'",
                account,
            )
            await conn.execute(
                "UPDATE outbox SET sent_at = now()"
                " WHERE topic = 'i' AND key = convert_to($1, 'UTF8')",
                account,
            )
    finally:
        await pool.close()
    billed = sum(row["total_jpy"] for row in invoices)
    assert billed == 10, (
        f"JPY 10 of usage billed as JPY {billed} on {published} invoices: {invoices}"
    )
