"""Helpers for the operations tests: the CLI as a process, HTTP probes, a private PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from worker.adapters.migrate import migrate
from worker.app import Worker

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(worker: Worker, path: str) -> tuple[int, str]:
    assert worker.http_port is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{worker.http_port}{path}", timeout=aiohttp.ClientTimeout(total=10)
        ) as response,
    ):
        return response.status, await response.text()


async def ready(worker: Worker) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(worker, "/ready")
    return status, orjson.loads(body)


async def scrape(worker: Worker) -> Samples:
    """Every sample of `/metrics`, keyed by (name, labels)."""
    status, text = await http_get(worker, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster of one test, so stopping it disturbs nobody else."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://billing@127.0.0.1:{self.port}/billing"

    async def _as_owner(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, f"{argv[0]} failed: {out.decode()}"

    async def init(self) -> None:
        await self._as_owner(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth=trust",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 50\n"
            )

    async def start(self) -> None:
        await self._as_owner(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "postgres.log"),
            "start",
        )

    async def stop(self, mode: str = "fast") -> None:
        await self._as_owner(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )

    async def create_database(self) -> None:
        admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        try:
            await admin.execute("CREATE ROLE billing LOGIN SUPERUSER")
            await admin.execute("CREATE DATABASE billing OWNER billing")
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.url)
        try:
            await migrate(conn)
        finally:
            await conn.close()


def _pg_bindir() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for d in [Path(os.environ["PG_BINDIR"])] if "PG_BINDIR" in os.environ else candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    assert found, "PostgreSQL server binaries not found; set PG_BINDIR"
    return Path(found).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """initdb, start, create the `billing` database and migrate it; stop and delete after."""
    # /tmp, not pytest's tmp_path: the postgres user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="billing-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(_pg_bindir(), root, _free_port())
    try:
        await cluster.init()
        await cluster.start()
        await cluster.create_database()
        yield cluster
    finally:
        with contextlib.suppress(AssertionError):
            await cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateKafka:
    """A broker of one test (scripts/services with its own state dir and ports), so stopping
    it disturbs nobody else."""

    root: Path
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _services(self, command: str) -> None:
        # Nothing of the shared services' settings may leak in: only this broker's knobs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        env |= {
            "BILLING_SERVICES_DIR": str(self.root),
            "BILLING_SERVICES_KAFKA_PORT": str(self.port),
            "BILLING_SERVICES_KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "BILLING_SERVICES_TOPICS": "0",  # the test creates its own
        }
        log = self.root / "services.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                str(ROOT / "scripts" / "services"), command, env=env, stdout=out, stderr=out
            )
            code = await proc.wait()
        if code != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise AssertionError(f"scripts/services {command} exited {code}:\n" + "\n".join(tail))

    async def start(self) -> None:
        await self._services("start-kafka")

    async def stop(self) -> None:
        await self._services("stop-kafka")


def _free_port_pair() -> int:
    """A port whose successor is free too (the broker's controller listener)."""
    for _ in range(50):
        port = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


@contextlib.asynccontextmanager
async def private_kafka() -> AsyncIterator[PrivateKafka]:
    """A one-node broker on free ports, started; stopped and deleted after."""
    root = Path(tempfile.mkdtemp(prefix="billing-kafka-"))
    broker = PrivateKafka(root, _free_port_pair())
    try:
        await broker.start()
        yield broker
    finally:
        with contextlib.suppress(AssertionError):
            await broker.stop()
        shutil.rmtree(root, ignore_errors=True)
