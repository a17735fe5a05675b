"""The expiry timer: forfeits and announces for accounts the stream does not touch.

A lot's forfeiture (and its notice) must sit after every input record that arrived before its
moment and before any that arrived after it, whatever the timer's instant. The stream places
it by itself before a later record; the timer may only do it for a cutoff `T` once the group
has committed past every record that was in the inputs when `T` had passed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition

from worker import logs
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.wire import Encoder
from worker.config import Settings
from worker.domain.account import Policy
from worker.errors import ShuttingDown, is_retriable
from worker.service.billing import sweep_expiry
from worker.service.ports import Store

log = logs.get("worker.expiry")
SWEEP_LIMIT = 500
# The cutoff trails this worker's clock, so a broker clock a little behind it cannot stamp a
# record appended after the noted end offsets with a time at or before the cutoff.
CLOCK_MARGIN = timedelta(seconds=30)


@dataclass(frozen=True)
class Mark:
    """A cutoff and the input end offsets noted once it had passed."""

    cutoff: datetime
    ends: dict[TopicPartition, int]


def behind(mark: Mark, committed: dict[TopicPartition, int | None]) -> int:
    """Records of `mark` the group has not committed yet (0 when the cutoff may be swept)."""
    return sum(max(end - (committed.get(tp) or 0), 0) for tp, end in mark.ends.items())


class ExpiryTimer:
    """Sweeps up to the last cutoff whose input the group has consumed; safe on every worker."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        policy: Policy,
        encoder: Encoder,
        on_swept: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.encoder = encoder
        self.on_swept = on_swept
        self.clock = clock
        self.topics = [settings.topic_usage, settings.topic_account_events]
        self.reader = OffsetReader(
            settings.kafka_bootstrap_servers, client_id=settings.client_id + "-expiry"
        )
        self.mark: Mark | None = None

    async def tick(self) -> int:
        """Sweep if the pending mark's input is consumed, then note the next; returns accounts
        swept."""
        group = self.settings.consumer_group
        offsets = await self.reader.committed_and_end(group, self.topics)
        committed = {tp: c for tp, (c, _) in offsets.items()}
        swept = 0
        if self.mark is not None:
            waiting = behind(self.mark, committed)
            if waiting:
                log.info("expiry_waiting", cutoff=self.mark.cutoff.isoformat(), behind=waiting)
                return 0
            while True:
                n = await sweep_expiry(
                    self.store, self.mark.cutoff, self.policy, self.encoder, SWEEP_LIMIT
                )
                swept += n
                if n < SWEEP_LIMIT:
                    break
            if swept:
                self.on_swept()
        # The clock is read before the end offsets: every record that arrived by the cutoff is
        # below the ends noted now.
        cutoff = self.clock() - CLOCK_MARGIN
        ends = await self.reader.end_offsets(self.topics)
        self.mark = Mark(cutoff, ends)
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except ShuttingDown:
                    return
                except Exception as exc:  # noqa: BLE001 - the sweep's transaction rolled back
                    # A failing sweep must not take billing down with it: log, retry next round.
                    level = log.warning if is_retriable(exc) else log.error
                    level("expiry_sweep_failed", cause=type(exc).__name__, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), timeout=self.settings.expiry_sweep_interval_s
                    )
        finally:
            await self.reader.close()
