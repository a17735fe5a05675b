"""Month close: on a timer once the month has ended plus grace and the group has caught up,
or by hand with `billing-worker close-month YYYY-MM`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka.errors import KafkaError

from worker import logs
from worker.adapters.kafka_admin import committed_and_end
from worker.adapters.migrate import check_schema
from worker.adapters.postgres import PgStore
from worker.adapters.reach import cause_of, reach_database
from worker.adapters.relay import OutboxRelay
from worker.adapters.wire import Encoder
from worker.config import Settings
from worker.domain.invoicing import (
    Invoice,
    closing_window,
    period_bounds,
    period_of,
    previous_period,
)
from worker.errors import ExitCode, is_retriable
from worker.metrics import Metrics
from worker.service.invoicing import close_month

log = logs.get("worker.month_close")


class MonthNotEnded(Exception):
    """A month cannot be closed before it has ended in the business time zone."""


def due_period(now: datetime, settings: Settings) -> str:
    """The latest month that ended at least the grace period ago."""
    return previous_period(
        period_of(now - timedelta(seconds=settings.month_close_grace_s), settings.zone)
    )


class MonthCloser:
    """Closes months for the whole group; safe when every worker runs it."""

    def __init__(
        self,
        settings: Settings,
        store: PgStore,
        encoder: Encoder,
        metrics: Metrics,
        on_closed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.metrics = metrics
        self.on_closed = on_closed

    async def is_closed(self, period: str) -> bool:
        async with self.store.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM month_closes WHERE period = $1)", period
                )
            )

    async def caught_up(self, period: str) -> bool:
        """Has the group committed past everything that was in the inputs when the month
        first became closable?"""
        s = self.settings
        offsets = await committed_and_end(
            s.kafka_bootstrap_servers, s.consumer_group, [s.topic_usage, s.topic_account_events]
        )
        snapshot = {f"{tp.topic}:{tp.partition}": end for tp, (_, end) in offsets.items()}
        async with self.store.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO month_close_marks (period, end_offsets) VALUES ($1, $2)"
                " ON CONFLICT (period) DO NOTHING",
                period,
                orjson.dumps(snapshot).decode(),
            )
            mark = orjson.loads(
                await conn.fetchval(
                    "SELECT end_offsets FROM month_close_marks WHERE period = $1", period
                )
            )
        committed = {f"{tp.topic}:{tp.partition}": c or 0 for tp, (c, _) in offsets.items()}
        behind = {
            k: end - committed.get(k, 0) for k, end in mark.items() if committed.get(k, 0) < end
        }
        if behind:
            log.info("month_close_waiting", period=period, behind=sum(behind.values()))
        return not behind

    async def close(self, period: str, now: datetime) -> list[Invoice] | None:
        _, end = period_bounds(period, self.settings.zone)
        if now < end:
            raise MonthNotEnded(f"{period} has not ended yet (it ends {end.isoformat()})")
        async with self.store.close_unit_of_work() as uow:
            invoices = await close_month(uow, period, now, self.settings.zone, self.encoder.invoice)
        if invoices is not None:
            self.metrics.invoices.inc(len(invoices))
            log.info("month_closed", period=period, invoices=len(invoices))
            self.on_closed()
        return invoices

    async def unclosed_periods(self, due: str) -> list[str]:
        """Ended months without a close, oldest first: a month missed during an outage still
        gets its own invoice (within `closing_window`; older usage lands on the oldest)."""
        periods = closing_window(due)
        async with self.store.pool.acquire() as conn:
            oldest = await conn.fetchval(
                "SELECT min(period) FROM postpay_usage WHERE invoice_id IS NULL"
            )
            closed = {
                row["period"]
                for row in await conn.fetch(
                    "SELECT period FROM month_closes WHERE period = ANY($1::text[])", periods
                )
            }
        first = max(oldest or due, periods[0])
        return [p for p in periods if p >= first and p not in closed]

    async def tick(self, now: datetime) -> list[Invoice] | None:
        """Close every due month in order; stop at the first whose input is not caught up."""
        invoices: list[Invoice] | None = None
        for period in await self.unclosed_periods(due_period(now, self.settings)):
            if not await self.caught_up(period):
                break
            invoices = await self.close(period, now)
        return invoices

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(datetime.now(UTC))
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("month_close_retrying", cause=type(exc).__name__, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.month_close_interval_s)


async def close_by_hand(settings: Settings, period: str, wait_s: float) -> tuple[int, str]:
    """(exit code, message) for `billing-worker close-month`."""
    from worker.app import create_pool, encoder_from

    pool = await reach_database(settings, lambda: create_pool(settings, size=2))
    try:
        async with pool.acquire() as conn:
            await check_schema(conn)
        closer = MonthCloser(settings, PgStore(pool), encoder_from(settings), Metrics())
        now = datetime.now(UTC)
        _, end = period_bounds(period, settings.zone)
        if now < end:
            return 1, f"refused: {period} has not ended yet (it ends {end.isoformat()})"
        deadline = asyncio.get_running_loop().time() + wait_s
        while not await closer.caught_up(period):
            if asyncio.get_running_loop().time() >= deadline:
                return 1, (
                    f"refused: the group {settings.consumer_group} has not yet applied "
                    f"the input that was waiting when {period} became closable"
                )
            await asyncio.sleep(1)
        invoices = await closer.close(period, datetime.now(UTC))
    finally:
        await pool.close()
    if invoices is None:
        return 0, f"{period} was already closed; nothing published"
    relay = OutboxRelay(
        settings.database_url, settings.kafka_bootstrap_servers, settings.client_id, Metrics()
    )
    try:
        published = await relay.publish_pending()
    except (KafkaError, OSError, TimeoutError) as exc:
        # The close is committed and its invoices wait in the outbox: say so, and why not sent.
        return int(ExitCode.BROKER_UNREACHABLE), (
            f"closed {period}: {len(invoices)} invoice(s) in the outbox, not yet published"
            f" (Kafka at {settings.kafka_bootstrap_servers}: {cause_of(exc)}):"
            " a running worker's relay publishes them once the broker answers"
        )
    how = "published" if published else "queued; the running worker's relay publishes them"
    return 0, f"closed {period}: {len(invoices)} invoice(s) {how}"
