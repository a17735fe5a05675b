"""The processes a chaos run drives: its own Kafka and PostgreSQL, and `billing-worker run`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("billing-worker")


class ServicesError(Exception):
    """scripts/services failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without any BILLING_* setting: nothing may point at shared services."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}


@dataclass
class Services:
    """The run's own pair of services, through scripts/services with their own dir and ports."""

    state_dir: Path
    kafka_port: int
    pg_port: int
    log: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://billing@127.0.0.1:{self.pg_port}/billing"

    async def call(self, command: str) -> float:
        """Run `scripts/services COMMAND`; returns the seconds it took."""
        env = clean_env()
        env.update(
            {
                "BILLING_SERVICES_DIR": str(self.state_dir),
                "BILLING_SERVICES_KAFKA_PORT": str(self.kafka_port),
                "BILLING_SERVICES_KAFKA_CONTROLLER_PORT": str(self.kafka_port + 1),
                "BILLING_SERVICES_PG_PORT": str(self.pg_port),
                # The run creates its topics itself: the six default ones would cost a tool
                # run (a JVM start) each.
                "BILLING_SERVICES_TOPICS": "0",
            }
        )
        started = time.monotonic()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n$ scripts/services {command}\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                str(ROOT / "scripts" / "services"), command, env=env, stdout=out, stderr=out
            )
            code = await proc.wait()
        if code != 0:
            raise ServicesError(f"scripts/services {command} exited {code}; see {self.log}")
        return time.monotonic() - started


@dataclass
class WorkerProc:
    """One `billing-worker run` process, killed and restarted by the run."""

    name: str
    env: dict[str, str]
    log: Path
    proc: asyncio.subprocess.Process | None = None
    retired: bool = False  # killed for good
    expected_exit: bool = False
    kills: int = 0
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=lambda: [str(CLI)])
    relay_kills: int = 0  # exits at the relay's fault point (chaos.faulty_worker)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, "run", env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        self.expected_exit = False
        # For whoever has to clean up after a runner that was itself killed.
        with (self.log.parent / "worker.pids").open("a") as pids:
            pids.write(f"{self.proc.pid}\n")

    async def kill(self) -> None:
        """SIGKILL: no batch is finished, nothing is flushed."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.expected_exit = True
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    async def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM and wait for the graceful stop; its exit code (None: had to be killed)."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.expected_exit = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            return None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
