"""Infrastructure failures and how the worker treats them."""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka.errors import KafkaError

from worker.domain.errors import BillingError


class WorkerError(BillingError):
    """An infrastructure-side failure of the worker itself."""


class ShuttingDown(WorkerError):
    """Stop was requested while a batch waited to be retried; it will be redelivered."""


_RETRIABLE_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    # What asyncpg raises instead of a connection error when the server ends a session that
    # is mid-operation (e.g. PostgreSQL shutting down); the next connection is fine.
    asyncpg.exceptions.InternalClientError,
)


def is_retriable(exc: BaseException) -> bool:
    """Infrastructure that may come back: the database, the broker, the network."""
    if isinstance(exc, BillingError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        # aiokafka marks each error class, as this root does (KafkaConnectionError among them).
        return bool(exc.retriable)
    return isinstance(exc, (*_RETRIABLE_PG, OSError, asyncio.TimeoutError))
