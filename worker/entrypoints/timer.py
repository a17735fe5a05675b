"""The one shape of every timer: tick now, then wait the interval or until stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from worker.errors import ShuttingDown


async def every(
    interval_s: float, stop: asyncio.Event, tick: Callable[[datetime], Awaitable[object]]
) -> None:
    """Call `tick` with the time until `stop` is set; a failure it does not handle ends it."""
    while not stop.is_set():
        try:
            await tick(datetime.now(UTC))
        except ShuttingDown:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
