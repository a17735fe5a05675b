"""Retrying an operation while its infrastructure may come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from worker import logs
from worker.errors import ShuttingDown, is_retriable
from worker.metrics import Metrics

log = logs.get("worker.retry")
T = TypeVar("T")


async def retry(
    operation: str,
    action: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    metrics: Metrics,
    max_backoff_s: float,
    *,
    target: str | None = None,
) -> T:
    """Run `action` until it succeeds; retriable failures wait with bounded backoff.

    One line when an outage starts (naming `target`, e.g. a masked DSN) and one when it ends,
    however many attempts it takes in between.
    """
    delay = 0.1
    failed_since: float | None = None
    attempts = 0
    while True:
        try:
            result = await action()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            cause = type(exc).__name__
            metrics.retries.labels(operation, cause).inc()
            attempts += 1
            if failed_since is None:
                failed_since = time.monotonic()
                extra = {} if target is None else {"target": target}
                log.warning("retrying", operation=operation, cause=cause, error=str(exc), **extra)
            if stop.is_set():
                raise ShuttingDown(operation) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
            continue
        if failed_since is not None:
            outage_s = round(time.monotonic() - failed_since, 1)
            log.info("recovered", operation=operation, failed_attempts=attempts, outage_s=outage_s)
        return result
