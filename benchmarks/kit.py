"""Plumbing for the benchmark: addresses, topics, bulk produce, offsets, databases, /proc."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.partitioner import murmur2

from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.migrate import create_database as adapters_create_database

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Services:
    """Where the Kafka broker and PostgreSQL server of `scripts/services` listen."""

    bootstrap: str
    database_url: str
    services_dir: Path

    @classmethod
    def from_env(cls) -> Services:
        """BILLING_* from the environment (as `make bench` sets them), else from
        `scripts/services env`, which honours BILLING_SERVICES_* the same way."""
        env = {k: v for k, v in os.environ.items() if k.startswith("BILLING_")}
        if "BILLING_KAFKA_BOOTSTRAP_SERVERS" not in env or "BILLING_DATABASE_URL" not in env:
            out = subprocess.run(
                [str(ROOT / "scripts" / "services"), "env"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for line in out.splitlines():
                key, _, value = line.removeprefix("export ").partition("=")
                env.setdefault(key, value.strip("'\""))
        local = Path(os.environ.get("BILLING_SERVICES_DIR", ROOT / ".local"))
        return cls(env["BILLING_KAFKA_BOOTSTRAP_SERVERS"], env["BILLING_DATABASE_URL"], local)

    def db_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.database_url)._replace(path="/" + name))

    def kafka_pid(self) -> int | None:
        return _pid_file(self.services_dir / "kafka" / "kafka.pid")

    def postmaster_pid(self) -> int | None:
        return _pid_file(self.services_dir / "pg" / "data" / "postmaster.pid")


def _pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


# ----------------------------------------------------------------------------- Kafka


def _topic_configs(topic: str, compacted: frozenset[str], inputs: frozenset[str]) -> dict[str, str]:
    configs = {"cleanup.policy": "compact"} if topic in compacted else {}
    if topic in inputs:
        configs["message.timestamp.type"] = "LogAppendTime"
    return configs


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    compacted: frozenset[str] = frozenset(),
    inputs: frozenset[str] = frozenset(),
) -> None:
    """Create topics (name → partitions; those in `compacted` compacted, those in `inputs`
    stamped by the broker on arrival, as the worker wants its inputs) and wait until the
    broker lists them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, n, 1, topic_configs=_topic_configs(t, compacted, inputs))
                for t, n in topics.items()
            ]
        )
        for _ in range(100):
            # Every partition has a leader: a producer started now gets no NotLeader retries.
            described = await admin.describe_topics(list(topics))
            if all(
                t["error_code"] == 0
                and len(t["partitions"]) == topics[t["topic"]]
                and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"topics have no leaders: {sorted(topics)}")
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def partition_of(key: bytes, partitions: int) -> int:
    """What the default partitioner picks (murmur2, as the Java client)."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
        request_timeout_ms=60_000,
    )


async def send_records(
    producer: AIOKafkaProducer,
    topic: str,
    partitions: int,
    records: Sequence[tuple[bytes, bytes]],
    timestamp_ms: int | None = None,
) -> list[asyncio.Future[object]]:
    """Hand records to the producer in whole batches per partition (order kept per key);
    returns the futures of their acks."""
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in records:
        by_partition.setdefault(partition_of(key, partitions), []).append((key, value))
    futures = []
    for partition, items in by_partition.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=timestamp_ms) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=timestamp_ms)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    records: Sequence[tuple[bytes, bytes]],
    chunk: int = 50_000,
) -> None:
    """Load records into a topic and wait for every ack."""
    producer = bulk_producer(bootstrap)
    await producer.start()
    try:
        for begin in range(0, len(records), chunk):
            await asyncio.gather(
                *await send_records(producer, topic, partitions, records[begin : begin + chunk])
            )
    finally:
        await producer.stop()


async def caught_up(reader: OffsetReader, group: str, topics: list[str]) -> bool:
    """The group's committed offsets have reached the end of every partition."""
    try:
        offsets = await reader.committed_and_end(group, topics)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        # A fresh broker answers the first group request so while it makes the offsets topic.
        return False
    return bool(offsets) and all((c or 0) >= end for c, end in offsets.values())


def topic_partitions(topic: str, partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(partitions)]


# ----------------------------------------------------------------------------- PostgreSQL


async def create_database(services: Services, name: str, *, migrated: bool = True) -> str:
    return await adapters_create_database(services.database_url, name, migrated=migrated)


async def drop_databases(services: Services, prefix: str) -> None:
    admin = await asyncpg.connect(services.database_url)
    try:
        names = [
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
            )
        ]
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# ----------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU of one process so far (0 when it is gone); with `reaped`, also that
    of its children that have exited and been waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def backends_of(database: str) -> list[int]:
    """PostgreSQL backends connected to `database`, by their process title
    (`postgres: USER DATABASE HOST(PORT) STATE`; `update_process_title` is on by default)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].split()
            except OSError:
                continue
            if len(title) > 2 and title[0] == b"postgres:" and title[2] == database.encode():
                out.append(int(entry.name))
    return out


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by the worker(s), PostgreSQL, Kafka and the whole machine."""

    worker: float
    postgres: float
    kafka: float
    bench: float
    busy: float
    total: float
    # The server processes serving the run's own database: on a server shared with other
    # work this is the only PostgreSQL figure that belongs to the run.
    backends: float = 0.0

    @classmethod
    def take(
        cls, services: Services, workers: Iterable[int], database: str | None = None
    ) -> CpuSnapshot:
        postmaster = services.postmaster_pid()
        pg = 0.0
        if postmaster is not None:
            # A backend that exits between two readings leaves its CPU in the postmaster's
            # reaped children's time: without it the difference can even come out negative.
            pg = cpu_seconds(postmaster, reaped=True) + sum(
                cpu_seconds(p) for p in children(postmaster)
            )
        kafka = services.kafka_pid()
        busy, total = system_cpu()
        return cls(
            sum(cpu_seconds(p) for p in workers),
            pg,
            0.0 if kafka is None else cpu_seconds(kafka),
            cpu_seconds(os.getpid()),
            busy,
            total,
            0.0 if database is None else sum(cpu_seconds(p) for p in backends_of(database)),
        )

    def minus(self, earlier: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            *(a - b for a, b in zip(vars(self).values(), vars(earlier).values(), strict=True))
        )


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "nproc": str(os.cpu_count() or 0),
        "cpu": model,
        "ram": f"{mem_kb / 1024**2:.1f} GiB",
        "load": " ".join(load),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "worker", "schemas")
    return commit + (" + uncommitted changes in worker/ or schemas/" if dirty else "")
