"""Retrying an operation while its infrastructure may come back."""

from __future__ import annotations

import asyncio
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
) -> T:
    """Run `action` until it succeeds; retriable failures wait with bounded backoff."""
    delay = 0.1
    last_cause = ""
    while True:
        try:
            return await action()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            cause = type(exc).__name__
            metrics.retries.labels(operation, cause).inc()
            if cause != last_cause:
                log.warning("retrying", operation=operation, cause=cause, error=str(exc))
                last_cause = cause
            if stop.is_set():
                raise ShuttingDown(operation) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
