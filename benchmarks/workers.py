"""Worker processes under measurement: start them, follow them to the end, read their cost."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.kit import (
    CpuSnapshot,
    Services,
    bulk_producer,
    caught_up,
    cpu_seconds,
    peak_rss_mb,
    produce,
    send_records,
    topic_partitions,
)
from benchmarks.workload import Record, Workload
from worker.adapters.digest import state_digest
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.strays import stray_rows

WORKER = Path(sys.executable).parent / "billing-worker"
# The digest of a run whose schema predates what the digest reads (an old A/B base).
NOT_COMPUTED = ""


class BenchError(Exception):
    """A run went wrong: its figures would mean nothing."""


@dataclass(frozen=True)
class Topics:
    usage: str
    account: str
    reminders: str
    invoices: str
    dlq: str
    balances: str

    @classmethod
    def named(cls, inputs: str, outputs: str) -> Topics:
        return cls(
            f"{inputs}.usage",
            f"{inputs}.account-events",
            f"{outputs}.reminders",
            f"{outputs}.invoices",
            f"{outputs}.dlq",
            f"{outputs}.balances",
        )

    @property
    def inputs(self) -> list[str]:
        return [self.usage, self.account]

    @property
    def outputs(self) -> list[str]:
        return [self.reminders, self.invoices, self.dlq, self.balances]


@dataclass
class Processes:
    """`count` `billing-worker run` processes in one consumer group."""

    services: Services
    topics: Topics
    database_url: str
    group: str
    log_dir: Path
    count: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: [str(WORKER), "run"])
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def env(self, index: int) -> dict[str, str]:
        # Nothing of this shell's Python path either: each side runs the code of its own venv.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BILLING_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }
        t = self.topics
        env.update(
            {
                "BILLING_KAFKA_BOOTSTRAP_SERVERS": self.services.bootstrap,
                "BILLING_DATABASE_URL": self.database_url,
                "BILLING_CONSUMER_GROUP": self.group,
                "BILLING_CLIENT_ID": f"{self.group}-{index}",
                "BILLING_TOPIC_USAGE": t.usage,
                "BILLING_TOPIC_ACCOUNT_EVENTS": t.account,
                "BILLING_TOPIC_REMINDERS": t.reminders,
                "BILLING_TOPIC_INVOICES": t.invoices,
                "BILLING_TOPIC_DLQ": t.dlq,
                "BILLING_TOPIC_BALANCES": t.balances,
                "BILLING_HTTP_PORT": "0",
                "BILLING_LOG_JSON": "true",
                **self.extra_env,
            }
        )
        return env

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            log = (self.log_dir / f"{self.group}-{index}.log").open("wb")
            self.logs.append(log)
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    *self.command,
                    env=self.env(index),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        for proc in self.procs:
            if proc.returncode is not None:
                raise BenchError(
                    f"worker {proc.pid} exited with {proc.returncode}; see {self.log_dir}"
                )

    async def stop(self) -> list[int | None]:
        """SIGTERM, as an orchestrator would; the exit codes (None if it had to be killed)."""
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(await asyncio.wait_for(proc.wait(), timeout=60))
            except TimeoutError:
                proc.kill()
                await proc.wait()
                codes.append(None)
        for log in self.logs:
            log.close()
        return codes

    def last_assignment(self) -> float | None:
        """When the last process received its partitions (epoch seconds): from then on the
        group no longer rebalances and every process works."""
        latest: float | None = None
        for index in range(self.count):
            for line in (self.log_dir / f"{self.group}-{index}.log").read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "partitions_assigned":
                    at = datetime.fromisoformat(str(entry["timestamp"])).timestamp()
                    latest = at if latest is None else max(latest, at)
        return latest

    def log_levels(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for index in range(self.count):
            for line in (self.log_dir / f"{self.group}-{index}.log").read_bytes().splitlines():
                try:
                    level = str(orjson.loads(line).get("level", "?"))
                except orjson.JSONDecodeError:
                    level = "unparsed"
                counts[level] = counts.get(level, 0) + 1
        return counts


@dataclass
class Steady:
    """The part of a backlog run after the group's last rebalance: every process working."""

    offset_s: float  # from the first event applied
    seconds: float
    applied: int  # events applied in the window (no duplicates, no dead letters)
    batches: int  # transactions that applied them (distinct processed_at)
    cpu: CpuSnapshot
    worker_cpu_s: list[float]

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0

    @property
    def backend_ms_per_kevent(self) -> float:
        return 1e6 * self.cpu.backends / self.applied if self.applied else 0.0

    @property
    def worker_ms_per_kevent(self) -> float:
        return 1e6 * self.cpu.worker / self.applied if self.applied else 0.0


@dataclass
class BacklogRun:
    """A backlog consumed from the first event read to the last offset committed and the
    outbox drained."""

    processes: int
    events: int
    seconds: float
    peak_rss_mb: list[float]
    cpu: CpuSnapshot
    counts: dict[str, int]
    digest: str = ""
    """SHA-256 of the billing state (worker.adapters.digest): equal for equal input."""
    worker_cpu_s: list[float] = field(default_factory=list)  # per process, same window
    steady: Steady | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def backend_ms_per_kevent(self) -> float:
        """CPU of the run's PostgreSQL backends per 1,000 events, in ms."""
        return 1e6 * self.cpu.backends / self.events if self.events else 0.0

    @property
    def worker_ms_per_kevent(self) -> float:
        return 1e6 * self.cpu.worker / self.events if self.events else 0.0


async def drained(
    conn: asyncpg.Connection, reader: OffsetReader, group: str, topics: Topics
) -> bool:
    if not await caught_up(reader, group, topics.inputs):
        return False
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)")


# Read alike from an A/B base's database and this revision's: every release writes one charge
# entry per applied usage event and a processed_events row per applied account event (usage
# rows there only before migration 0011), all stamped with their batch's transaction time.
_APPLIED = """
SELECT recorded_at AS at FROM ledger_entries WHERE kind = 'charge'
UNION ALL
SELECT processed_at FROM processed_events WHERE source = 'account'
"""
_FIRST_BATCH = f"SELECT min(at) FROM ({_APPLIED}) a"
_APPLIED_SINCE = f"SELECT count(*) FROM ({_APPLIED}) a WHERE at >= to_timestamp($1)"
_BATCHES = f"SELECT count(DISTINCT at) FROM ({_APPLIED}) a WHERE at >= to_timestamp($1)"


async def run_backlog(procs: Processes, work: Workload, timeout_s: float) -> BacklogRun:
    """Start the workers on topics already filled with `work`; follow them to the end."""
    services = procs.services
    database = urlsplit(procs.database_url).path.lstrip("/")

    def snapshot() -> tuple[CpuSnapshot, list[float]]:
        cpu = CpuSnapshot.take(services, procs.pids, database)
        return cpu, [cpu_seconds(pid) for pid in procs.pids]

    conn = await asyncpg.connect(procs.database_url)
    reader = OffsetReader({"bootstrap_servers": services.bootstrap}, timeout_s=10)
    await procs.start()
    try:
        first: float | None = None
        cpu_first, each_first = snapshot()
        samples: list[tuple[float, CpuSnapshot, list[float]]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            procs.check()
            if time.monotonic() > deadline:
                raise BenchError(f"not done within {timeout_s:.0f} s; see {procs.log_dir}")
            if first is None:
                at = await conn.fetchval(_FIRST_BATCH)
                if at is not None:
                    first = at.timestamp()
                    cpu_first, each_first = snapshot()
            elif await drained(conn, reader, procs.group, procs.topics):
                end = time.time()
                cpu_end, each_end = snapshot()
                break
            elif time.time() - (samples[-1][0] if samples else first) >= 0.25:
                samples.append((time.time(), *snapshot()))
            await asyncio.sleep(0.05)
        rss = [peak_rss_mb(pid) for pid in procs.pids]
        counts = await verify(conn, work, procs.topics)
        counts["batches"] = await conn.fetchval(_BATCHES, 0.0)
        steady = await _steady(
            conn, procs.last_assignment(), first, end, samples, (cpu_end, each_end)
        )
        t = procs.topics
        roles = {t.usage: "usage", t.account: "account", t.reminders: "reminders"}
        try:
            digest = await state_digest(
                conn, {**roles, t.invoices: "invoices", t.dlq: "dlq", t.balances: "balances"}
            )
        except (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError) as exc:
            # An A/B base from before the digest's tables: its state cannot be compared.
            print(f"[bench] state digest not computed: the schema predates it ({exc})")
            digest = NOT_COMPUTED
    finally:
        await reader.close()
        await conn.close()
        codes = await procs.stop()
    if any(code != 0 for code in codes):
        raise BenchError(f"workers exited with {codes}; see {procs.log_dir}")
    counts.update({f"log_{k}": v for k, v in procs.log_levels().items()})
    each = [b - a for a, b in zip(each_first, each_end, strict=True)]
    return BacklogRun(
        procs.count,
        work.total,
        end - first,
        rss,
        cpu_end.minus(cpu_first),
        counts,
        digest,
        worker_cpu_s=each,
        steady=steady,
    )


async def _steady(
    conn: asyncpg.Connection,
    settled: float | None,
    first: float,
    end: float,
    samples: list[tuple[float, CpuSnapshot, list[float]]],
    last: tuple[CpuSnapshot, list[float]],
) -> Steady | None:
    """From the first CPU sample after the last assignment to the end of the run."""
    if settled is None:
        return None
    start = next((sample for sample in samples if sample[0] >= max(settled, first)), None)
    if start is None:
        return None
    at, cpu, each = start
    applied = await conn.fetchval(_APPLIED_SINCE, at)
    batches = await conn.fetchval(_BATCHES, at)
    return Steady(
        at - first,
        end - at,
        applied,
        batches,
        last[0].minus(cpu),
        [b - a for a, b in zip(each, last[1], strict=True)],
    )


def compared_digests(digests: Iterable[str]) -> set[str]:
    """The digests that can be compared (those computed)."""
    return {d for d in digests if d != NOT_COMPUTED}


async def verify(conn: asyncpg.Connection, work: Workload, topics: Topics) -> dict[str, int]:
    """The database holds exactly what the workload must produce; else the run is void."""
    processed = {
        "usage": await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'"),
        "account": await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE source = 'account'"
        ),
    }
    outbox = {
        r["topic"]: r["n"]
        for r in await conn.fetch("SELECT topic, count(*) AS n FROM outbox GROUP BY topic")
    }
    counts = {
        "applied_usage": processed.get("usage", 0),
        "applied_account": processed.get("account", 0),
        "dead_letters": outbox.get(topics.dlq, 0),
        "reminders": outbox.get(topics.reminders, 0),
        # Snapshots conflated away are deleted: what is left is what was published.
        "balances": outbox.get(topics.balances, 0),
        "ledger_entries": await conn.fetchval("SELECT count(*) FROM ledger_entries"),
    }
    expected = {
        "applied_usage": work.applied_usage,
        "applied_account": work.applied_account,
        "dead_letters": work.dead,
    }
    wrong = {k: (counts[k], v) for k, v in expected.items() if counts[k] != v}
    if wrong:
        raise BenchError(f"database does not match the workload (got, expected): {wrong}")
    bad = await conn.fetchval(
        "SELECT count(*) FROM accounts a LEFT JOIN (SELECT account_id, sum(amount_jpy) AS s"
        " FROM ledger_entries GROUP BY account_id) l USING (account_id)"
        " WHERE a.balance_jpy <> coalesce(l.s, 0)"
    )
    if bad:
        raise BenchError(f"{bad} accounts whose balance is not the sum of their ledger")
    strays = await stray_rows(conn)
    if strays:
        raise BenchError(f"rows of no account in their partition: {strays}")
    return counts


@dataclass(frozen=True)
class StageStats:
    """One stage of `billing_stage_seconds` over a measured window (from bucket counts)."""

    count: int
    mean_ms: float
    p50_ms: float
    p99_ms: float


@dataclass
class LatencyRun:
    """One load level: usage sent at `target_rate`, each reminder's delay after its cause."""

    target_rate: float
    achieved_rate: float
    events: int
    latencies_ms: list[float]
    cpu: CpuSnapshot | None = None
    seconds: float = 0.0
    share: float = 0.0
    """Of the measured 1-process rate."""
    stages: dict[str, StageStats] = field(default_factory=dict)
    load: str = ""
    """The machine's load average at the end of the level."""

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[
            int(q * 1000) - 1
        ]


@dataclass
class LatencyLevel:
    """What one load level sends: accounts to set up first, then usage at `rate`."""

    share: float
    rate: float
    setup: Workload
    usage: Sequence[Record]
    usage_ids: Sequence[str]


async def run_latency(
    procs: Processes,
    levels: Sequence[LatencyLevel],
    partitions: tuple[int, int],
    timeout_s: float,
) -> list[LatencyRun]:
    """One worker for every level, lowest first: per level its accounts set up and applied,
    then usage at the level's rate, each send stamped, against the moment its reminder can be
    read from the reminders topic; the worker's stage histograms are read around each level."""
    services, topics = procs.services, procs.topics
    inputs, outputs = partitions
    port = _free_port()
    procs.extra_env = {**procs.extra_env, "BILLING_HTTP_PORT": str(port)}
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    conn = await asyncpg.connect(procs.database_url)
    reader = OffsetReader({"bootstrap_servers": services.bootstrap}, timeout_s=10)
    runs: list[LatencyRun] = []
    await procs.start()
    try:
        received: list[tuple[str, float]] = []
        listener = await _listen(services.bootstrap, topics.reminders, outputs, received)
        try:
            database = urlsplit(procs.database_url).path.lstrip("/")
            for level in levels:
                await produce(services.bootstrap, topics.account, inputs, level.setup.account)
                await _wait(lambda: drained(conn, reader, procs.group, topics), procs, timeout_s)
                before = await scrape_stages(metrics_url)
                mark = len(received)
                cpu_start = CpuSnapshot.take(services, procs.pids, database)
                started = time.monotonic()
                sent_at, achieved = await _paced(
                    services.bootstrap, topics.usage, inputs, level.usage, level.rate
                )
                await _wait(lambda: drained(conn, reader, procs.group, topics), procs, timeout_s)
                cpu = CpuSnapshot.take(services, procs.pids, database).minus(cpu_start)
                seconds = time.monotonic() - started
                # The last reminders are committed; give the reader a moment to see them.
                await asyncio.sleep(1.0)
                stages = stage_stats(before, await scrape_stages(metrics_url))
                latencies = _matched(level.usage_ids, sent_at, received[mark:])
                load = " ".join(f"{x:.1f}" for x in os.getloadavg())
                runs.append(
                    LatencyRun(
                        level.rate,
                        achieved,
                        len(level.usage),
                        latencies,
                        cpu,
                        seconds,
                        level.share,
                        stages,
                        load,
                    )
                )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    finally:
        await reader.close()
        await conn.close()
        await procs.stop()
    return runs


def _matched(
    usage_ids: Sequence[str], sent_at: Sequence[float], received: Sequence[tuple[str, float]]
) -> list[float]:
    """Milliseconds from the first send of each usage event to its reminder's arrival."""
    first_send: dict[str, float] = {}
    for event_id, at in zip(usage_ids, sent_at, strict=True):
        if event_id:
            first_send.setdefault(event_id, at)
    latencies = []
    for reminder_id, at in received:
        _, _, event_id = reminder_id.partition(":charge:")
        if event_id in first_send:
            latencies.append((at - first_send[event_id]) * 1000)
    return latencies


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# stage -> (cumulative count per bucket upper bound, count, sum)
Buckets = dict[str, tuple[dict[float, float], float, float]]


async def scrape_stages(url: str) -> Buckets:
    """The worker's `billing_stage_seconds` histogram as it stands."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != "billing_stage_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels["stage"]
            buckets, count, total = out.get(stage, ({}, 0.0, 0.0))
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            out[stage] = (buckets, count, total)
    return out


def stage_stats(before: Buckets, after: Buckets) -> dict[str, StageStats]:
    """What each stage observed between two scrapes; quantiles interpolated in a bucket."""
    stats = {}
    for stage, (buckets, count, total) in after.items():
        old_buckets, old_count, old_total = before.get(stage, ({}, 0.0, 0.0))
        n = count - old_count
        if n <= 0:
            continue
        cumulative = sorted((le, c - old_buckets.get(le, 0.0)) for le, c in buckets.items())
        stats[stage] = StageStats(
            int(n),
            (total - old_total) / n * 1000,
            _quantile(cumulative, 0.5 * n) * 1000,
            _quantile(cumulative, 0.99 * n) * 1000,
        )
    return stats


def _quantile(cumulative: list[tuple[float, float]], rank: float) -> float:
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le) or count == below:
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


async def _wait(condition: object, procs: Processes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():  # type: ignore[operator]
        procs.check()
        if time.monotonic() > deadline:
            raise BenchError(f"workers did not catch up within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def _listen(
    bootstrap: str, topic: str, partitions: int, received: list[tuple[str, float]]
) -> asyncio.Task[None]:
    """Collect (reminder id, arrival time) from the end of the topic on."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # As the worker's own consumer: the reader must not add a fetch wait of its own to
        # what it measures (records of a partition left out of a fetch in flight wait for it).
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    consumer.assign(topic_partitions(topic, partitions))
    await consumer.seek_to_end()

    async def loop() -> None:
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for messages in fetched.values():
                    for m in messages:
                        headers = dict(m.headers or ())
                        rid = headers.get("message_id", b"").decode()
                        received.append((rid, now))
        finally:
            await consumer.stop()

    return asyncio.create_task(loop())


async def _paced(
    bootstrap: str, topic: str, partitions: int, records: Sequence[Record], rate: float
) -> tuple[list[float], float]:
    """Send at `rate` per second in 5 ms ticks; returns each record's send time."""
    producer = bulk_producer(bootstrap)
    await producer.start()
    sent_at = [0.0] * len(records)
    futures = []
    try:
        started = time.monotonic()
        sent = 0
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - started) * rate) + 1)
            if due > sent:
                now = time.time()
                futures += await send_records(
                    producer, topic, partitions, records[sent:due], int(now * 1000)
                )
                sent_at[sent:due] = [now] * (due - sent)
                sent = due
            await asyncio.sleep(0.005)
        achieved = len(records) / max(time.monotonic() - started, 1e-9)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent_at, achieved
