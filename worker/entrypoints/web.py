"""HTTP views: Prometheus `/metrics`, liveness `/health`, readiness `/ready`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import asyncpg
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import redact
from worker.adapters import observe
from worker.config import Settings
from worker.entrypoints.monitor import Monitor
from worker.entrypoints.stream import StreamProcessor
from worker.metrics import Metrics

PROBE_TIMEOUT_S = 2.0

Check = dict[str, Any]


class Worker(Protocol):
    """What the views read of the running worker (`worker.app.Worker` has it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def stop(self) -> asyncio.Event: ...

    @property
    def pool(self) -> asyncpg.Pool | None: ...

    @property
    def stream(self) -> StreamProcessor | None: ...

    @property
    def monitor(self) -> Monitor | None: ...


def build(worker: Worker) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        observe_commits(worker)
        # Alerting on "no ready worker" needs readiness as a series, not only as /ready.
        checks = await readiness(worker)
        worker.metrics.ready.set(1 if all(c["ok"] for c in checks.values()) else 0)
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        # Answering at all proves the process and its event loop run.
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        checks = await readiness(worker)
        ok = all(check["ok"] for check in checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


def observe_commits(worker: Worker) -> None:
    """Seconds since the last commit, per partition owned now, computed at scrape time."""
    stream = worker.stream
    consumer = stream.consumer if stream is not None else None
    if stream is None or consumer is None:
        worker.metrics.since_commit.clear()
        return
    worker.metrics.set_since_commit(
        consumer.assignment(), stream.last_commit, stream.listener.assigned_at, time.monotonic()
    )


async def readiness(worker: Worker) -> dict[str, Check]:
    """Each check as {"ok": bool, "detail": str}; ready when all are ok."""
    return {
        "running": _check(not worker.stop.is_set(), "consuming", "shutting down"),
        "postgres": await _postgres(worker),
        "kafka": await _kafka(worker),
        "inputs": _inputs(worker),
        "assignment": _assignment(worker),
        "progress": _progress(worker),
        "outbox": _outbox(worker),
    }


def _outbox(worker: Worker) -> Check:
    # Parked rows wait for a person, not for this process: they are shown, never "not ready"
    # (an orchestrator restarting the process would not publish them either).
    parked = None if worker.monitor is None else worker.monitor.parked
    if parked is None:
        return _check(True, "outbox not read yet", "")
    if parked == 0:
        return _check(True, "no message parked", "")
    return _check(
        True,
        f"{parked} message(s) parked, refused by the broker; the rest flows:"
        " `billing-worker outbox parked` lists them",
        "",
    )


def _check(ok: bool, good: str, bad: str) -> Check:
    return {"ok": ok, "detail": redact.scrub(good if ok else bad)}


async def _postgres(worker: Worker) -> Check:
    if worker.pool is None:
        return _check(False, "", "pool not open yet")
    try:
        await observe.ping(worker.pool, PROBE_TIMEOUT_S)
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    ) as exc:
        return _check(False, "", f"{type(exc).__name__}: {exc}")
    return _check(True, "SELECT 1 answered", "")


async def _kafka(worker: Worker) -> Check:
    monitor = worker.monitor
    if monitor is None:
        return _check(False, "", "not connected yet")
    try:
        await asyncio.wait_for(monitor.reader.ping(), PROBE_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        return _check(False, "", f"{type(exc).__name__}: {exc}")
    return _check(True, "broker answered a metadata request", "")


def _inputs(worker: Worker) -> Check:
    stream = worker.stream
    if stream is None:
        return _check(False, "", "consumer not started")
    problem = stream.input_problem
    return _check(problem is None, "both input topics exist, partitioned alike", problem or "")


def _assignment(worker: Worker) -> Check:
    stream = worker.stream
    consumer = stream.consumer if stream is not None else None
    if stream is None or consumer is None:
        return _check(False, "", "consumer not started")
    owned = consumer.assignment()
    if owned:
        return _check(True, f"{len(owned)} partitions assigned", "")
    if stream.listener.rebalancing:
        return _check(True, "assignment in progress", "")
    monitor = worker.monitor
    if monitor is not None and monitor.lag_at is not None and not monitor.lag:
        return _check(False, "", "the input topics have no partitions (do they exist?)")
    # More processes than partitions: this one is a hot standby, which is healthy.
    return _check(True, "in the group with no partitions (standby)", "")


def _progress(worker: Worker) -> Check:
    """Not ready when an owned partition has lag but no commit for `ready_commit_stall_s`."""
    stream, monitor = worker.stream, worker.monitor
    consumer = stream.consumer if stream is not None else None
    if stream is None or consumer is None or monitor is None or monitor.lag_at is None:
        return _check(True, "lag not measured yet", "")
    limit_s = worker.settings.ready_commit_stall_s
    now = time.monotonic()
    stalled = []
    for tp in sorted(consumer.assignment()):
        if monitor.lag.get(tp, 0) <= 0:
            continue
        last = max(stream.last_commit.get(tp, 0.0), stream.listener.assigned_at)
        if now - last > limit_s:
            stalled.append(f"{tp.topic}:{tp.partition} lag={monitor.lag[tp]}")
    return _check(
        not stalled,
        "committing where there is lag",
        f"no commit for over {limit_s:g} s despite lag: " + ", ".join(stalled),
    )


async def serve(worker: Worker) -> web.AppRunner:
    # A scrape in flight must not hold up shutdown for long.
    runner = web.AppRunner(build(worker), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, worker.settings.http_host, worker.settings.http_port)
    await site.start()
    return runner
