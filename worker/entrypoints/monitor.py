"""A timer that feeds /metrics and /ready: group lag from committed offsets, outbox backlog.

The lag is what the broker holds for the whole group (committed offsets against log-end
offsets, and the timestamp of the record at each lagging committed offset), so it is right
even while this process owns no partition or is still starting.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from worker import logs
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.observe import outbox_backlog
from worker.config import Settings
from worker.entrypoints.timer import every
from worker.errors import is_retriable
from worker.metrics import Metrics

log = logs.get("worker.monitor")


class Monitor:
    """Refreshes the lag and outbox gauges every `lag_refresh_interval_s`, reusing its clients."""

    def __init__(self, settings: Settings, metrics: Metrics, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pool = pool
        self.reader = OffsetReader(
            kafka_client_args(settings), client_id=settings.client_id + "-monitor"
        )
        self.topics = [settings.topic_usage, settings.topic_account_events]
        self.lag: dict[TopicPartition, int] = {}
        self.lag_at: float | None = None  # monotonic time of the last good lag reading
        self.parked: int | None = None  # outbox rows parked, at the last good reading
        self._failing: dict[str, str] = {}

    async def tick(self, _: datetime) -> None:
        await self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await every(self.settings.lag_refresh_interval_s, stop, self.tick)
        finally:
            await self.reader.close()

    async def refresh(self) -> None:
        await self.refresh_lag()
        await self.refresh_backlog()

    async def refresh_lag(self) -> None:
        group = self.settings.consumer_group
        try:
            rows = await self.reader.lag(group, self.topics)
        except Exception as exc:
            if not _tolerated(exc):
                raise
            self._failed("lag", exc)
            return
        self._recovered("lag")
        self.metrics.set_lag(group, rows)
        self.lag = {TopicPartition(r["topic"], r["partition"]): r["lag"] for r in rows}
        self.lag_at = time.monotonic()

    async def refresh_backlog(self) -> None:
        """The relay sets these too, but only while it leads and can reach the broker;
        a stuck relay is exactly when the backlog must still be visible."""
        try:
            backlog = await outbox_backlog(self.pool)
        except Exception as exc:
            if not _tolerated(exc):
                raise
            self._failed("outbox_backlog", exc)
            return
        self._recovered("outbox_backlog")
        self.metrics.set_outbox(backlog.unsent, backlog.oldest_s, backlog.parked)
        self.parked = backlog.parked

    def _failed(self, what: str, exc: Exception) -> None:
        cause = type(exc).__name__
        if self._failing.get(what) != cause:  # once per cause, not every tick
            log.warning("monitor_refresh_failed", what=what, cause=cause, error=str(exc))
        self._failing[what] = cause

    def _recovered(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            log.info("monitor_refresh_recovered", what=what)


def _tolerated(exc: Exception) -> bool:
    """Any broker error or infrastructure failure: the next tick tries again."""
    return isinstance(exc, KafkaError) or is_retriable(exc)
