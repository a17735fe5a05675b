"""Waiting in tests: poll a positive condition until it holds, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.1


async def wait_until(
    condition: Callable[[], Awaitable[T] | T],
    timeout_s: float = 30.0,
    what: str = "condition",
    poll_s: float = POLL_S,
) -> T:
    """Poll `condition` (sync or async) until it returns something truthy; return that value.

    Raises AssertionError naming `what` when `timeout_s` passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(poll_s)  # the poll interval, not a wait for an outcome
