"""Expiry sweep: forfeits due lots and announces expiring ones on a timer; safe on many workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from worker import logs
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


class ExpirySweep:
    """Sweeps every `expiry_sweep_interval_s`; a failed round is logged and tried next time."""

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

    async def tick(self, now: datetime) -> None:
        try:
            while await sweep_expiry(self.store, now, self.policy, self.encoder) >= _ROUND:
                pass
            self.on_swept()
        except ShuttingDown:
            raise
        except Exception as exc:  # noqa: BLE001 - the sweep's transaction rolled back
            # A failing sweep must not take billing down with it: log, retry next round.
            level = log.warning if is_retriable(exc) else log.error
            level("expiry_sweep_failed", cause=type(exc).__name__, error=str(exc))

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.settings.expiry_sweep_interval_s, stop, self.tick)
