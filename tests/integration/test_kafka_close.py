"""Kafka clients close their connections on every path: a stop that is cancelled included."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.kafka_connection import kafka_client_args
from worker.config import Settings


def open_connections(network: Any) -> int:
    """Connections of an aiokafka client that are still open."""
    return sum(1 for conn in list(network._conns.values()) if conn.connected())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6])
async def test_a_reader_whose_close_is_cancelled_still_closes_every_connection(
    settings: Settings, steps: int
) -> None:
    reader = OffsetReader(kafka_client_args(settings), client_id=settings.client_id)
    await reader.ping()
    assert reader._admin is not None
    assert reader._consumer is not None
    networks = [reader._admin._client, reader._consumer._client]
    assert sum(open_connections(n) for n in networks) >= 1

    # A worker shutting down cancels its timers, possibly while they are closing their reader.
    closing = asyncio.create_task(reader.close())
    for _ in range(steps):
        await asyncio.sleep(0)  # let the close get this far before it is cancelled
    closing.cancel()
    # (aiokafka's fetcher swallows a cancellation that lands in its close)
    with contextlib.suppress(asyncio.CancelledError):
        await closing

    assert [open_connections(n) for n in networks] == [0, 0]
