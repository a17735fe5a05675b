"""Month close: on a timer once the month has ended plus grace and the group has caught up,
or by hand with `billing-worker close-month YYYY-MM`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiokafka.errors import KafkaError

from worker import logs
from worker.adapters.kafka_admin import committed_and_end
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import check_schema
from worker.adapters.postgres import PgStore
from worker.adapters.reach import cause_of, reach_database
from worker.adapters.wire import Encoder
from worker.builders import create_pool, encoder_from, relay_from
from worker.config import Settings
from worker.domain.invoicing import Invoice, period_bounds, period_of, previous_period
from worker.entrypoints.timer import every
from worker.errors import ExitCode, is_retriable
from worker.metrics import Metrics
from worker.service.invoicing import close_period, lagging_behind, unclosed_periods
from worker.service.ports import Store

log = logs.get("worker.month_close")


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
        store: Store,
        encoder: Encoder,
        metrics: Metrics,
        on_closed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.metrics = metrics
        self.on_closed = on_closed

    async def caught_up(self, period: str) -> bool:
        """Has the group committed past everything that was in the inputs when the month
        first became closable?"""
        s = self.settings
        offsets = await committed_and_end(
            kafka_client_args(s),
            s.consumer_group,
            [s.topic_usage, s.topic_account_events],
            open_transactions=True,  # usage in a transaction still open has arrived too
        )
        by_key = {f"{tp.topic}:{tp.partition}": (c or 0, end) for tp, (c, end) in offsets.items()}
        behind = await lagging_behind(self.store, period, by_key)
        if behind:
            log.info("month_close_waiting", period=period, behind=behind)
        return not behind

    async def close(self, period: str, now: datetime) -> list[Invoice] | None:
        invoices = await close_period(
            self.store, period, now, self.settings.zone, self.encoder.invoice
        )
        if invoices is not None:
            self.metrics.invoices.inc(len(invoices))
            log.info("month_closed", period=period, invoices=len(invoices))
            self.on_closed()
        return invoices

    async def tick(self, now: datetime) -> list[Invoice] | None:
        """Close every due month in order; stop at the first whose input is not caught up."""
        invoices: list[Invoice] | None = None
        pending = await unclosed_periods(self.store, due_period(now, self.settings))
        while pending and await self.caught_up(pending[0]):
            invoices = await self.close(pending.pop(0), now)
        self.metrics.month_close_due.set(self.due_at(pending, now).timestamp())
        return invoices

    def due_at(self, pending: list[str], now: datetime) -> datetime:
        """When the oldest month still open is due to close: the oldest pending one, else the
        month now running (whose end plus grace is still ahead)."""
        grace = timedelta(seconds=self.settings.month_close_grace_s)
        period = pending[0] if pending else period_of(now - grace, self.settings.zone)
        _, end = period_bounds(period, self.settings.zone)
        return end + grace

    async def _tick_tolerant(self, now: datetime) -> None:
        try:
            await self.tick(now)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("month_close_retrying", cause=type(exc).__name__, error=str(exc))

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.settings.month_close_interval_s, stop, self._tick_tolerant)


async def close_by_hand(settings: Settings, period: str, wait_s: float) -> tuple[int, str]:
    """(exit code, message) for `billing-worker close-month`."""
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
    relay = relay_from(settings, Metrics())
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
