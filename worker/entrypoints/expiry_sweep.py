"""Expiry sweep: forfeits and announces for accounts the stream does not touch; safe on many
workers.

A lot's forfeiture (and its notice) must sit after every input record that arrived before its
moment and before any that arrived after it, whatever the timer's instant. The stream places
it by itself before a later record of the account; the sweep may only do it up to a cutoff
`T` once the group has committed past every record that was in the inputs when `T` had passed
(the gate month close uses too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import TopicPartition

from worker import logs
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.wire import Encoder
from worker.config import Settings
from worker.domain.account import Policy
from worker.entrypoints.timer import every
from worker.errors import ShuttingDown, is_retriable
from worker.service.billing import sweep_expiry
from worker.service.ports import Store

log = logs.get("worker.expiry_sweep")
# A sweep round handles at most this many accounts; a full round means more may be due.
_ROUND = 500
# The cutoff trails this worker's clock, so a broker clock a little behind it cannot stamp a
# record appended after the noted end offsets with a time at or before the cutoff.
CLOCK_MARGIN = timedelta(seconds=10)


@dataclass(frozen=True)
class Mark:
    """A cutoff and the input end offsets noted once it had passed."""

    cutoff: datetime
    ends: dict[TopicPartition, int]


def behind(mark: Mark, committed: dict[TopicPartition, int | None]) -> int:
    """Records below `mark` the group has not committed yet (0: the cutoff may be swept)."""
    return sum(max(end - (committed.get(tp) or 0), 0) for tp, end in mark.ends.items())


class ExpirySweep:
    """Every `expiry_sweep_interval_s`: sweep up to the pending cutoff if the group has consumed
    its input, then note the next; a failed round is logged and tried next time."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        policy: Policy,
        encoder: Encoder,
        on_swept: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.encoder = encoder
        self.on_swept = on_swept
        self.topics = [settings.topic_usage, settings.topic_account_events]
        self.reader = OffsetReader(
            kafka_client_args(settings), client_id=settings.client_id + "-expiry"
        )
        self.mark: Mark | None = None

    async def tick(self, now: datetime) -> int:
        """Accounts swept this round (failures are logged, not raised)."""
        try:
            return await self._round(now)
        except ShuttingDown:
            raise
        except Exception as exc:  # noqa: BLE001 - the sweep's transaction rolled back
            # A failing sweep must not take billing down with it: log, retry next round.
            level = log.warning if is_retriable(exc) else log.error
            level("expiry_sweep_failed", cause=type(exc).__name__, error=str(exc))
            return 0

    async def _round(self, now: datetime) -> int:
        swept = 0
        if self.mark is not None:
            offsets = await self.reader.committed_and_end(self.settings.consumer_group, self.topics)
            waiting = behind(self.mark, {tp: c for tp, (c, _) in offsets.items()})
            if waiting:
                log.info("expiry_waiting", cutoff=self.mark.cutoff.isoformat(), behind=waiting)
                return 0
            while True:
                n = await sweep_expiry(
                    self.store, self.mark.cutoff, self.policy, self.encoder, _ROUND
                )
                swept += n
                if n < _ROUND:
                    break
            if swept:
                self.on_swept()
        # `now` was read before these end offsets: every record that arrived by the cutoff is
        # below them.
        ends = await self.reader.end_offsets(self.topics, open_transactions=True)
        self.mark = Mark(now - CLOCK_MARGIN, ends)
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await every(self.settings.expiry_sweep_interval_s, stop, self.tick)
        finally:
            await self.reader.close()
