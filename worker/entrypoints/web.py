"""HTTP views: Prometheus `/metrics`, liveness `/health`, readiness `/ready`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from worker.app import Worker


def build(worker: Worker) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        # Answering at all proves the event loop runs.
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        checks = await readiness(worker)
        status = 200 if all(checks.values()) else 503
        return web.json_response({"ready": status == 200, "checks": checks}, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


async def readiness(worker: Worker) -> dict[str, bool]:
    """PostgreSQL answers, the consumer is connected to the broker and in the group."""
    checks = {"postgres": False, "kafka": False}
    if worker.pool is not None:
        try:
            async with worker.pool.acquire(timeout=2) as conn:
                checks["postgres"] = await conn.fetchval("SELECT 1", timeout=2) == 1
        except (OSError, TimeoutError, Exception):  # noqa: BLE001 - any failure means not ready
            checks["postgres"] = False
    stream = worker.stream
    consumer = stream.consumer if stream is not None else None
    if consumer is not None:
        client = consumer._client  # noqa: SLF001 - aiokafka exposes no public connectivity probe
        checks["kafka"] = bool(await client.ready(client.get_random_node() or 0))
    return checks


async def serve(worker: Worker) -> web.AppRunner:
    runner = web.AppRunner(build(worker))
    await runner.setup()
    site = web.TCPSite(runner, worker.settings.http_host, worker.settings.http_port)
    await site.start()
    return runner
