"""Reaching PostgreSQL and Kafka from one-shot commands: bounded in time, naming the target."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aiokafka.errors import KafkaError

from worker.adapters.migrate import check_schema
from worker.config import Settings
from worker.errors import BrokerUnreachable, DatabaseUnreachable, Failure, is_retriable
from worker.redact import mask_dsn

T = TypeVar("T")

_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 2.0


def cause_of(exc: BaseException) -> str:
    """`Type: message` of an exception, on one line."""
    name = type(exc).__name__
    text = str(exc).strip().replace("\n", " ")
    if text.startswith(name):  # aiokafka's errors already start with their name
        return text
    return f"{name}: {text}" if text else name


def _gave_up(waited_s: float) -> str:
    return f"; gave up after {waited_s:.0f} s" if waited_s >= 0.5 else ""


def database_unreachable(settings: Settings, exc: BaseException, waited_s: float) -> Failure:
    """The failure for PostgreSQL at `settings.database_url` (password masked)."""
    return DatabaseUnreachable(
        f"cannot reach PostgreSQL at {mask_dsn(settings.database_url)}"
        f" ({cause_of(exc)}{_gave_up(waited_s)}):"
        " check BILLING_DATABASE_URL and that PostgreSQL is running"
    )


def broker_unreachable(settings: Settings, exc: BaseException, waited_s: float) -> Failure:
    """The failure for Kafka at `settings.kafka_bootstrap_servers`."""
    return BrokerUnreachable(
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers}"
        f" ({cause_of(exc)}{_gave_up(waited_s)}):"
        " check BILLING_KAFKA_BOOTSTRAP_SERVERS and that the broker is running"
    )


async def within(
    timeout_s: float,
    action: Callable[[], Awaitable[T]],
    failure: Callable[[BaseException, float], Failure],
) -> T:
    """`action()`, tried again on retriable errors until `timeout_s` has passed, then `failure`.

    A non-retriable error (a wrong password, a database that does not exist) ends at once.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout_s
    delay = _FIRST_DELAY_S
    while True:
        try:
            return await asyncio.wait_for(action(), max(deadline - loop.time(), 0.1))
        except (asyncpg.PostgresError, KafkaError, OSError, TimeoutError) as exc:
            waited_s = loop.time() - started
            if not is_retriable(exc) or loop.time() + delay >= deadline:
                raise failure(exc, waited_s) from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY_S)


async def reach_database(settings: Settings, open_: Callable[[], Awaitable[T]]) -> T:
    """`open_()` (a connection or a pool) within `connect_timeout_s`, else DatabaseUnreachable."""

    def failure(exc: BaseException, waited_s: float) -> Failure:
        return database_unreachable(settings, exc, waited_s)

    return await within(settings.connect_timeout_s, open_, failure)


async def connect_database(settings: Settings, *, schema: bool = True) -> asyncpg.Connection:
    """A connection within `connect_timeout_s`; with `schema`, the migrations are checked too."""
    s = settings
    conn: asyncpg.Connection = await reach_database(
        s, lambda: asyncpg.connect(s.database_url, timeout=s.connect_timeout_s)
    )
    if schema:
        try:
            await check_schema(conn)
        except BaseException:
            await conn.close()
            raise
    return conn


async def reach_kafka(settings: Settings, action: Callable[[], Awaitable[T]]) -> T:
    """`action()` (e.g. a client's `start`) within `connect_timeout_s`, else BrokerUnreachable."""

    def failure(exc: BaseException, waited_s: float) -> Failure:
        return broker_unreachable(settings, exc, waited_s)

    return await within(settings.connect_timeout_s, action, failure)
