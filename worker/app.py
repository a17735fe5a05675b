"""Builds the worker from settings and runs it; nothing connects at import time."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from worker import logs
from worker.adapters.migrate import prepare_schema
from worker.adapters.postgres import PgStore
from worker.adapters.reach import database_unreachable
from worker.adapters.relay import OutboxRelay, drain
from worker.builders import create_pool, decoder_from, encoder_from, policy_from, relay_from
from worker.config import Settings
from worker.entrypoints.expiry_sweep import ExpirySweep
from worker.entrypoints.monitor import Monitor
from worker.entrypoints.month_close import MonthCloser
from worker.entrypoints.stream import StreamProcessor
from worker.errors import Failure, ShuttingDown, WorkerError
from worker.metrics import Metrics
from worker.redact import mask_dsn
from worker.retry import retry

log = logs.get("worker.app")


class UncleanShutdown(Failure):
    """Shutdown ran out of time or failed; what was not committed is redelivered on restart."""

    error_code = "unclean_shutdown"


@dataclass
class Worker:
    """Every long-running part of one worker process."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pool: asyncpg.Pool | None = None
    stream: StreamProcessor | None = None
    relay: OutboxRelay | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    handle_signals: bool = True
    http_port: int | None = None
    monitor: Monitor | None = None

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then finish the batch, commit, drain the outbox, exit."""
        s = self.settings
        decoder = decoder_from(s)  # reads the rate table: a bad one stops the start here
        policy = policy_from(s)
        encoder = encoder_from(s)
        if self.handle_signals:
            self._install_signals()
        self.pool = await self._open_database()
        if self.pool is None:
            log.info("worker_stopped", note="stopped before the database answered")
            return
        store = PgStore(self.pool)
        relay = relay_from(s, self.metrics)
        self.relay = relay
        self.stream = StreamProcessor(
            s,
            store,
            decoder,
            encoder,
            policy,
            self.metrics,
            on_applied=lambda _: relay.wake(),
        )
        self.monitor = Monitor(s, self.metrics, self.pool)
        sweep = ExpirySweep(s, store, policy, encoder, on_swept=relay.wake)
        relay_stop = asyncio.Event()
        from worker.entrypoints.web import serve  # aiohttp only when running

        web = await serve(self)
        self.http_port = web.addresses[0][1] if web.addresses else None
        tasks = [
            asyncio.create_task(self.stream.run(self.stop), name="stream"),
            asyncio.create_task(relay.run(relay_stop), name="relay"),
            asyncio.create_task(sweep.run(self.stop), name="expiry-sweep"),
            asyncio.create_task(self.monitor.run(self.stop), name="monitor"),
        ]
        if s.month_close_enabled:
            closer = MonthCloser(s, store, encoder, self.metrics, on_closed=relay.wake)
            tasks.append(asyncio.create_task(closer.run(self.stop), name="month-close"))
        log.info(
            "worker_started", group=s.consumer_group, topics=[s.topic_usage, s.topic_account_events]
        )
        clean = False
        try:
            failure = await self._until_stopped(tasks)
            clean = await self._shut_down(tasks[0], relay, tasks[1])
        finally:
            relay_stop.set()
            # Let a send in flight be acked and marked, so the next relay does not repeat it.
            await asyncio.wait([tasks[1]], timeout=5)
            # A stream still running here is stuck in a call that never checks `stop` (e.g.
            # a commit to an unreachable broker): cancelled, its batch is redelivered.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await web.cleanup()
            try:
                await asyncio.wait_for(self.pool.close(), timeout=5)
            except TimeoutError:
                self.pool.terminate()
            log.info("worker_stopped", clean=clean)
        if failure is not None:
            raise failure
        if not clean:
            raise UncleanShutdown(
                f"not stopped cleanly within {s.shutdown_timeout_s:g} s: what was not committed"
                " is read again on restart (BILLING_SHUTDOWN_TIMEOUT_S bounds the shutdown)"
            )

    async def _open_database(self) -> asyncpg.Pool | None:
        """The pool, once PostgreSQL answers and holds the schema this worker needs (migrated
        first with BILLING_MIGRATE_ON_START); None when stopped before that."""
        s = self.settings
        target = mask_dsn(s.database_url)
        try:
            pool = await retry(
                "database_connect",
                lambda: create_pool(s),
                self.stop,
                self.metrics,
                s.retry_max_backoff_s,
                target=target,
            )
        except ShuttingDown:
            return None
        except (asyncpg.PostgresError, OSError) as exc:
            # Not worth retrying (a wrong password, no such database): say where, and stop.
            raise database_unreachable(s, exc, 0) from exc
        try:
            # Retried like the connection (PostgreSQL may flap at start); a mismatch is not.
            await retry(
                "schema_check",
                lambda: prepare_schema(pool, migrate_first=s.migrate_on_start),
                self.stop,
                self.metrics,
                s.retry_max_backoff_s,
                target=target,
            )
        except ShuttingDown:
            await pool.close()
            return None
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _until_stopped(self, tasks: list[asyncio.Task[None]]) -> BaseException | None:
        """Wait for a stop request; a task that ends before one (it failed) stops the worker."""
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        requested = self.stop.is_set()
        self.stop.set()
        for task in done:
            if task is not stopping:
                error = None if task.cancelled() else task.exception()
                if error is None and requested:
                    continue  # it ended because stop was requested: a timer task does
                log.error("task_ended", task=task.get_name(), error=repr(error))
                return error or WorkerError(f"task {task.get_name()} ended by itself")
        return None

    async def _shut_down(
        self, stream_task: asyncio.Task[None], relay: OutboxRelay, relay_task: asyncio.Task[None]
    ) -> bool:
        """Finish and commit the batch in hand (the consumer then leaves the group), then let
        the relay publish what was committed; False when `shutdown_timeout_s` ran out first."""
        timeout_s = self.settings.shutdown_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        done, _ = await asyncio.wait([stream_task], timeout=timeout_s)
        if not done or stream_task.cancelled() or stream_task.exception() is not None:
            log.error("shutdown_incomplete", step="stream", timeout_s=timeout_s)
            return False
        log.info("stream_stopped", note="batch in hand committed, group left")
        if relay_task.done():
            # The relay ended by itself (it refused the output log): nothing would drain.
            log.error("shutdown_incomplete", step="outbox", note="the relay has stopped")
            return False
        remaining_s = max(deadline - asyncio.get_running_loop().time(), 0.1)
        try:
            drained = await asyncio.wait_for(
                drain(relay, self.settings.database_url, timeout_s=remaining_s), remaining_s
            )
        except (
            TimeoutError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ) as exc:
            log.error("shutdown_incomplete", step="outbox", error=repr(exc))
            return False
        if not drained:
            log.error("shutdown_incomplete", step="outbox", timeout_s=timeout_s)
            return False
        log.info("outbox_drained")
        return True

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.info("shutdown_already_requested", signal=sig.name)
            return
        log.info("shutdown_requested", signal=sig.name, timeout_s=self.settings.shutdown_timeout_s)
        self.stop.set()
