"""`python -m chaos.runner` (`make chaos`): the scenario against real processes.

Its own Kafka and PostgreSQL (scripts/services with their own state dir and ports), a fresh
database and topics per run, two `billing-worker run` processes in one consumer group. While
the scenario is produced and applied: SIGKILLs at random instants (each followed by a
restart), exits of a worker's relay right after a Kafka transaction commit and before the
outbox update (its worst instant; `chaos.faulty_worker`), one PostgreSQL outage, one broker
restart while a relay transaction is open, one worker killed for good, and an outage of every
worker of the group from just before the first lot expires until the last forfeiture is due
by more than the lateness allowance (with usage arriving for those lots during it and after
it). Hostile records of every kind are on every input partition. At the end the database and
every output topic, as a read_committed consumer sees them, are compared with the reference
model, and the output topics are checked for duplicates.

A reference group (one `billing-worker run`, its own database and output topics, never
killed) consumes the same input topics meanwhile; the run passes only when the state digest of
the faulty group equals the reference group's: the same input log gave the same billing with
and without the worker faults. The two share the broker and PostgreSQL, so both live through
their outages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from chaos import check, duplicates, gaps, model, oracle_feed
from chaos.faulty_worker import (
    EXIT_AFTER_COMMIT,
    EXIT_FILE,
    FAULT_DIR_ENV,
    HOLD_FILE,
    HOLDING_FILE,
    RELEASE_FILE,
    claim,
)
from chaos.kafka_io import (
    Topics,
    WaveProducer,
    create_topics,
    delete_topics,
    read_all,
    waves,
)
from chaos.procs import CLI, ROOT, Services, WorkerProc, clean_env, free_port
from chaos.report import render_markdown, summary_lines
from chaos.scenario import Item, Params, Scenario, build
from worker.adapters.digest import state_digest
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, drop_database
from worker.builders import policy_from, rates_from
from worker.config import Settings
from worker.domain.invoicing import period_of
from worker.entrypoints.expiry_sweep import CLOCK_MARGIN

APPLIED_LABELS = {
    "usage",
    "purchase",
    "reminder",
    "open",
    "switch",
    "payment",
    "late_usage",
    "in_time_usage",
    "too_late_usage",
}
# The in-time usage of an expiring lot is produced this long before the lot expires, the
# group's outage starts this long before the first lot expires.
IN_TIME_LEAD = timedelta(seconds=4)
OUTAGE_LEAD = timedelta(seconds=8)


@dataclass(frozen=True)
class Options:
    params: Params
    kills: int = 5
    relay_kills: int = 5
    pg_stop_s: float = 12.0
    kafka_restarts: int = 1
    workers: int = 2
    retire: bool = True
    outage: bool = True
    reference: bool = True
    rate: float = 4000.0
    services_dir: Path = ROOT / ".local-chaos"
    kafka_port: int = 29092
    pg_port: int = 25432
    start_services: bool = True
    stop_services: bool = True
    results: Path | None = ROOT / "benchmarks" / "chaos" / "results.json"
    report: Path | None = ROOT / "benchmarks" / "chaos" / "RESULTS.md"
    timeout_s: float = 3600.0


class RunFailed(Exception):
    """The run could not be carried out (not a mismatch: those are reported)."""


class Probe:
    """A database connection that survives the PostgreSQL outage (None while it is down).

    Several tasks of the run ask at once (the chaos schedule, the expiry traffic, the month
    gate): one query at a time, since an asyncpg connection runs one operation at a time and
    a second one raises (InternalClientError, not caught here, ended a run).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()

    async def value(self, sql: str, *args: Any) -> Any:
        async with self._turn:
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncpg.connect(self.url, timeout=3)
                return await self.conn.fetchval(sql, *args, timeout=10)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.close()
                return None

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()


@dataclass
class Run:
    o: Options
    services: Services
    run_dir: Path
    settings: Settings
    topics: Topics
    scenario: Scenario | None = None
    workers: list[WorkerProc] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    wave_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    producer: WaveProducer | None = None
    t0: float = field(default_factory=time.monotonic)
    reference: Settings | None = None  # the reference group's settings (same inputs)
    ref_worker: WorkerProc | None = None

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.o.params.seed * 7919 + 1)
        self.probe = Probe(self.settings.database_url)
        self.ref_probe = None if self.reference is None else Probe(self.reference.database_url)
        # Cleared while the group's outage lasts: no worker of it may start meanwhile.
        self.up = asyncio.Event()
        self.up.set()
        self.start_lock = asyncio.Lock()
        self.expected_applied = 1
        self.deadline = self.t0 + self.o.timeout_s
        self.faults = self.run_dir / "faults"
        self.faults.mkdir(parents=True, exist_ok=True)

    def note(self, action: str, **details: Any) -> None:
        entry = {"t_s": round(time.monotonic() - self.t0, 1), "action": action, **details}
        self.timeline.append(entry)
        print(f"[chaos] +{entry['t_s']:7.1f}s {action} {details or ''}", flush=True)

    # --- workers -----------------------------------------------------------------------

    def worker_env(
        self, name: str, http_port: int, settings: Settings | None = None
    ) -> dict[str, str]:
        settings = settings or self.settings
        env = clean_env()
        for key, value in settings.model_dump().items():
            if value is not None:
                env[f"BILLING_{key.upper()}"] = str(value)
        env["BILLING_CLIENT_ID"] = f"{settings.consumer_group}-{name}"
        env["BILLING_HTTP_PORT"] = str(http_port)
        env[FAULT_DIR_ENV] = str(self.faults)
        env["PYTHONPATH"] = str(ROOT)
        return env

    async def start_workers(self) -> None:
        for n in range(self.o.workers):
            name = "AB"[n] if n < 2 else f"W{n}"
            worker = WorkerProc(
                name,
                self.worker_env(name, free_port()),
                self.run_dir / f"worker-{name}.log",
                command=[sys.executable, "-m", "chaos.faulty_worker", "billing-worker"],
            )
            await worker.start()
            self.workers.append(worker)
        self.note("workers_started", count=len(self.workers))
        if self.reference is not None:
            env = self.worker_env("R", free_port(), self.reference)
            env.pop(FAULT_DIR_ENV)
            self.ref_worker = WorkerProc("R", env, self.run_dir / "worker-R.log")
            await self.ref_worker.start()
            self.note("reference_worker_started")

    async def start(self, worker: WorkerProc) -> None:
        """(Re)start a worker of the group, once its outage is over (and only once)."""
        await self.up.wait()
        async with self.start_lock:
            if not worker.running:
                await worker.start()

    async def supervise(self) -> None:
        """A worker that exits by itself is noted and started again."""
        while True:
            await asyncio.sleep(0.5)
            for w in self.workers:
                proc = w.proc
                if w.retired or w.expected_exit or proc is None or proc.returncode is None:
                    continue
                if proc.returncode == EXIT_AFTER_COMMIT:
                    w.relay_kills += 1
                    self.note("relay_exited_after_commit", worker=w.name)
                    await self.start(w)
                    w.restarts += 1
                    self.note("restarted", worker=w.name)
                    continue
                w.unexpected_exits.append(f"exit {proc.returncode}: {w.tail(8)}")
                self.note("unexpected_exit", worker=w.name, code=proc.returncode)
                await asyncio.sleep(1.0)
                await self.start(w)
                w.restarts += 1

    # --- production ----------------------------------------------------------------------

    async def produce(self, items: list[Item], gate_period: str | None) -> None:
        assert self.producer is not None
        started = time.monotonic()
        sent = 0
        for wave in waves(items):
            if gate_period is not None and wave[0].after_close:
                await self.wait_for_close(gate_period)
                gate_period = None
            async with self.wave_lock:
                await self.producer.send(wave)
            sent += len(wave)
            if self.o.rate > 0:
                ahead_s = sent / self.o.rate - (time.monotonic() - started)
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)

    def probes(self) -> list[Probe]:
        return [self.probe] + ([self.ref_probe] if self.ref_probe is not None else [])

    async def wait_for_close(self, period: str) -> None:
        self.note("gate_waiting_for_close", period=period)
        for probe in self.probes():
            while not await probe.value(
                "SELECT EXISTS (SELECT 1 FROM month_closes WHERE period = $1)", period
            ):
                self.check_deadline("the month close")
                await asyncio.sleep(0.5)
        self.note("month_closed", period=period)

    def check_deadline(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise RunFailed(f"timed out after {self.o.timeout_s:g} s waiting for {what}")

    # --- chaos ---------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        rnd = self.rnd
        actions = [(rnd.uniform(0.05, 0.92), "kill") for _ in range(self.o.kills)]
        if self.o.relay_kills > 0:
            # One after the other while input (and so output) still flows: an exit is only
            # reached when a relay commits something.
            actions.append((rnd.uniform(0.05, 0.3), "relay_kills"))
        if self.o.pg_stop_s > 0:
            actions.append((rnd.uniform(0.3, 0.6), "pg_stop"))
        actions += [
            (rnd.uniform(0.15, 0.85), "kafka_restart") for _ in range(self.o.kafka_restarts)
        ]
        if self.o.retire and self.o.workers > 1:
            actions.append((rnd.uniform(0.35, 0.7), "retire"))
        return sorted(actions)

    async def progress(self) -> float | None:
        applied = await self.probe.value("SELECT count(*) FROM applied_events")
        return None if applied is None else applied / self.expected_applied

    async def chaos(self) -> None:
        for threshold, action in self.schedule():
            while (p := await self.progress()) is None or p < threshold:
                self.check_deadline(f"progress {threshold:.0%}")
                await asyncio.sleep(0.25)
            await asyncio.sleep(self.rnd.uniform(0, 1.0))  # a random instant, mid-batch
            await getattr(self, f"do_{action}")(round(p, 3))

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.workers if not w.retired]

    async def do_kill(self, progress: float) -> None:
        worker = self.rnd.choice(self.alive())
        await worker.kill()
        self.note("sigkill", worker=worker.name, progress=progress)
        await asyncio.sleep(self.rnd.uniform(0.5, 3.0))
        await self.start(worker)
        worker.restarts += 1
        self.note("restarted", worker=worker.name)

    async def do_retire(self, progress: float) -> None:
        worker = self.alive()[-1]
        await worker.kill()
        worker.kills -= 1
        worker.retired = True
        self.note("sigkill_for_good", worker=worker.name, progress=progress)

    async def do_pg_stop(self, progress: float) -> None:
        started = time.monotonic()
        await self.services.call("stop-pg")
        self.note("postgres_stopped", progress=progress)
        await asyncio.sleep(self.o.pg_stop_s)
        await self.services.call("start-pg")
        down = round(time.monotonic() - started, 1)
        self.figures["postgres_down_s"] = down
        self.note("postgres_started", down_s=down)

    def relay_kills(self) -> int:
        return sum(w.relay_kills for w in self.workers)

    async def do_relay_kills(self, progress: float) -> None:
        """`relay_kills` times: the next relay commit is followed by a hard exit, before the
        outbox update; the process is restarted by `supervise`."""
        for _ in range(self.o.relay_kills):
            before = self.relay_kills()
            (self.faults / EXIT_FILE).write_text("")
            self.note("relay_exit_armed", progress=progress)
            give_up = time.monotonic() + 60
            while self.relay_kills() == before:
                if not self.up.is_set():  # the group's outage: no relay runs until it ends
                    await self.up.wait()
                    give_up = time.monotonic() + 60
                if time.monotonic() > give_up and claim(self.faults / EXIT_FILE):
                    self.note("relay_exit_not_reached")
                    return
                self.check_deadline("a relay commit")
                await asyncio.sleep(0.2)
            progress = round(await self.progress() or 0.0, 3)

    async def hold_transaction(self) -> bool:
        """A relay stops with its transaction open (messages sent, not committed)."""
        (self.faults / HOLD_FILE).write_text("")
        # After the group's outage the next relay round waits for a restarted worker to catch
        # up: on a loaded machine that can take well over half a minute.
        give_up = time.monotonic() + 120
        while not (self.faults / HOLDING_FILE).exists():
            if time.monotonic() > give_up and claim(self.faults / HOLD_FILE):
                return False
            await asyncio.sleep(0.05)
        return True

    async def do_kafka_restart(self, progress: float) -> None:
        # Not before the lots expired: the in-time usage must reach the broker before its lots
        # expire, and a restart takes over a minute on a loaded machine.
        _, end = self.expiry_window()
        if datetime.now(UTC) <= end:
            self.note("kafka_restart_postponed_past_the_expiries")
            await _sleep_until(end)
        held = await self.hold_transaction()
        # The producer stands aside (it is the platform, not the system under test).
        async with self.wave_lock:
            self.note("kafka_restarting", progress=progress, relay_transaction_open=held)
            took = round(await self.services.call("restart-kafka"), 1)
        if held:
            (self.faults / RELEASE_FILE).write_text("")
        self.figures.setdefault("kafka_restart_s", []).append(took)
        self.figures.setdefault("kafka_restart_in_transaction", []).append(held)
        self.note("kafka_restarted", took_s=took)

    # --- lots expiring: the group's outage and the usage of those lots -------------------

    def expiry_window(self) -> tuple[datetime, datetime]:
        """The group's outage: from before the first lot expires until the last lot's
        forfeiture has been due for a few seconds (longer than the lateness allowance)."""
        assert self.scenario is not None
        expiries = self.scenario.expiries
        lateness = timedelta(seconds=self.settings.lateness_allowance_s)
        return min(expiries) - OUTAGE_LEAD, max(expiries) + lateness + timedelta(seconds=3)

    async def outage(self) -> None:
        """Every worker of the group down (SIGKILL) for the whole expiry window."""
        begin, end = self.expiry_window()
        await _sleep_until(begin)
        self.up.clear()
        started = datetime.now(UTC)
        self.note("outage_started", workers=sum(1 for w in self.alive() if w.running))
        while datetime.now(UTC) < end:
            for worker in self.alive():  # also one a restart began just before
                if worker.running:
                    await worker.kill()
            await asyncio.sleep(0.2)
        self.up.set()
        for worker in self.alive():
            if not worker.running:
                await self.start(worker)
                worker.restarts += 1
        ended = datetime.now(UTC)
        assert self.scenario is not None
        lateness = timedelta(seconds=self.settings.lateness_allowance_s)
        self.figures["outage"] = {
            "down_s": round((ended - started).total_seconds(), 1),
            "began_before_first_expiry_s": round(
                (min(self.scenario.expiries) - started).total_seconds(), 1
            ),
            "ended_after_last_forfeit_due_s": round(
                (ended - max(self.scenario.expiries) - lateness).total_seconds(), 1
            ),
        }
        self.note("outage_ended", **self.figures["outage"])

    async def expiry_traffic(self) -> None:
        """Usage for the expiring lots: in time, just before they expire (the group is down
        then), and too late, once every group has forfeited them."""
        assert self.scenario is not None
        assert self.producer is not None
        for item in sorted(self.scenario.in_time, key=lambda i: (i.expires, i.seq)):
            assert item.expires is not None
            await _sleep_until(item.expires - IN_TIME_LEAD)
            async with self.wave_lock:
                await self.producer.send([item])
        self.note("in_time_usage_produced", count=len(self.scenario.in_time))
        late = self.scenario.too_late
        accounts = sorted({i.key for i in late if i.key is not None})
        for probe in self.probes():
            # Each expiring account has two lots (test credits and a purchase).
            while await probe.value(
                "SELECT count(*) FROM lots WHERE account_id = ANY($1::text[]) AND forfeited",
                accounts,
            ) != 2 * len(accounts):  # None while PostgreSQL is down
                self.check_deadline("the forfeitures before the too-late usage")
                await asyncio.sleep(0.5)
        async with self.wave_lock:
            await self.producer.send(late)
        self.note("too_late_usage_produced", count=len(late))

    # --- the end -------------------------------------------------------------------------

    def groups(self) -> list[tuple[Settings, Probe]]:
        out = [(self.settings, self.probe)]
        if self.reference is not None and self.ref_probe is not None:
            out.append((self.reference, self.ref_probe))
        return out

    async def settle(self, due: datetime) -> None:
        """Until every group has no lag, its outbox is empty and every due lot was swept."""
        quiet = 0
        async with OffsetReader(kafka_client_args(self.settings)) as reader:
            while quiet < 3:
                self.check_deadline("the workers to settle")
                await asyncio.sleep(1.0)
                ready = datetime.now(UTC) >= due
                for s, probe in self.groups():
                    try:
                        offsets = await reader.committed_and_end(
                            s.consumer_group, [s.topic_usage, s.topic_account_events]
                        )
                    except (OSError, TimeoutError) as exc:
                        print(f"[chaos] lag not readable yet: {exc!r}", flush=True)
                        ready = False
                        break
                    lag = sum(end - (c or 0) for c, end in offsets.values())
                    unsent = await probe.value("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                    ready = ready and lag == 0 and unsent == 0
                quiet = quiet + 1 if ready else 0
        self.note("settled")

    async def stop_workers(self) -> list[int | None]:
        codes = [await w.terminate(90) for w in self.alive()]
        self.note("workers_stopped", exit_codes=codes)
        if self.ref_worker is not None:
            self.figures["reference_exit_code"] = await self.ref_worker.terminate(90)
        return codes

    async def cli_lag(self) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            str(CLI),
            "lag",
            "--json",
            env=self.worker_env("lag", 0),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RunFailed(f"billing-worker lag failed: {err.decode(errors='replace')}")
        report: dict[str, Any] = json.loads(out)
        return report


async def _sleep_until(at: datetime) -> None:
    delay = (at - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


def _names(seed: int) -> tuple[str, str]:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"chaos-s{seed}-{stamp}", f"chaos_s{seed}_{stamp}"


def _settings(services: Services, url: str, prefix: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=services.bootstrap,
        database_url=url,
        consumer_group=prefix,
        client_id=prefix,
        topic_usage=f"{prefix}.sms.usage.v1",
        topic_account_events=f"{prefix}.billing.account-events.v1",
        topic_reminders=f"{prefix}.billing.reminders.v1",
        topic_invoices=f"{prefix}.billing.invoices.v1",
        topic_dlq=f"{prefix}.billing.dlq.v1",
        topic_balances=f"{prefix}.billing.balances.v1",
        input_partitions=6,
        output_partitions=3,
        lateness_allowance_s=5,
        expiry_sweep_interval_s=1.0,
        month_close_grace_s=5,
        month_close_interval_s=2.0,
        # Ordering must come from the caught-up check alone, never from giving up waiting.
        align_max_wait_ms=120_000,
        # Every offset commit in the worker logs, so a loss can be traced offset by offset.
        log_debug="worker.stream",
        shutdown_timeout_s=60,
        log_json=True,
    )


def _reference_settings(settings: Settings, url: str, prefix: str) -> Settings:
    """The reference group: the same input topics, its own group, database and outputs."""
    return settings.model_copy(
        update={
            "database_url": url,
            "consumer_group": prefix,
            "client_id": prefix,
            "topic_reminders": f"{prefix}.billing.reminders.v1",
            "topic_invoices": f"{prefix}.billing.invoices.v1",
            "topic_dlq": f"{prefix}.billing.dlq.v1",
            "topic_balances": f"{prefix}.billing.balances.v1",
        }
    )


def _topics(s: Settings) -> Topics:
    return Topics(
        s.topic_usage,
        s.topic_account_events,
        s.topic_reminders,
        s.topic_invoices,
        s.topic_dlq,
        s.topic_balances,
    )


async def _execute(run: Run) -> dict[str, Any]:
    o, s = run.o, run.settings
    policy = policy_from(s)
    t = time.monotonic()
    scenario = build(o.params, datetime.now(UTC), policy, rates_from(s), s.zone)
    run.scenario = scenario
    run.figures["generate_s"] = round(time.monotonic() - t, 1)
    run.expected_applied = sum(1 for i in scenario.items() if i.label in APPLIED_LABELS)
    run.note(
        "scenario",
        phase0=len(scenario.phase0),
        main=len(scenario.main),
        period=scenario.layout.period,
    )
    run.producer = WaveProducer(s.kafka_bootstrap_servers, run.topics)
    await run.producer.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        await run.produce(scenario.phase0, None)
        run.note("phase0_produced")
        await run.start_workers()
        tasks.append(asyncio.create_task(run.supervise()))
        t = time.monotonic()
        chaos = asyncio.create_task(run.chaos())
        tasks.append(chaos)
        timed = asyncio.create_task(run.expiry_traffic())
        tasks.append(timed)
        if o.outage:
            outage = asyncio.create_task(run.outage())
            tasks.append(outage)
        await run.produce(scenario.main, scenario.layout.period)
        run.figures["produce_s"] = round(time.monotonic() - t, 1)
        run.note("produced", resent_waves=run.producer.resent_waves)
        await timed
        if o.outage:
            await outage
        await chaos
        # The sweep forfeits only up to a cutoff that trails the clock by CLOCK_MARGIN.
        due = max(scenario.expiries) + policy.lateness + CLOCK_MARGIN + timedelta(seconds=4)
        await run.settle(due)
        run.figures["process_s"] = round(time.monotonic() - t, 1)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run.producer.stop()
    run.figures["sigterm_exit_codes"] = await run.stop_workers()
    run.figures["lag"] = (await run.cli_lag())["total"]
    return await _verify(run)


async def _verify(run: Run) -> dict[str, Any]:
    s, scenario = run.settings, run.scenario
    assert scenario is not None
    t = time.monotonic()
    end = datetime.now(UTC)
    arrivals: dict[tuple[str, int, int], int] = {}
    logs = await read_all(
        s.kafka_bootstrap_servers,
        {
            s.topic_usage: 6,
            s.topic_account_events: 6,
            s.topic_reminders: 3,
            s.topic_invoices: 3,
            s.topic_dlq: 3,
            s.topic_balances: 3,
        },
        arrivals=arrivals,
    )
    outputs = {"reminders": s.topic_reminders, "invoices": s.topic_invoices, "dlq": s.topic_dlq}
    run.figures["duplicates_read_committed"] = duplicates.by_topic(logs, outputs)
    uncommitted = await read_all(
        s.kafka_bootstrap_servers, dict.fromkeys(outputs.values(), 3), 300.0, "read_uncommitted"
    )
    run.figures["aborted_records_read_uncommitted"] = sum(
        len(uncommitted[t]) - len(logs[t]) for t in outputs.values()
    )
    lookup: dict[tuple[bytes | None, bytes | None], Item] = {}
    for item in scenario.items():
        lookup.setdefault((None if item.key is None else item.key.encode(), item.value), item)
    records, inputs, keys = [], {}, {}
    for topic in (s.topic_usage, s.topic_account_events):
        for partition, offset, key, value in logs[topic]:
            found = lookup.get((key, value))
            if found is None:
                raise RunFailed(f"{topic}:{partition}:{offset} is no record of the scenario")
            arrived = datetime.fromtimestamp(arrivals[(topic, partition, offset)] / 1000, UTC)
            records.append(model.Record(found, topic, partition, offset, arrived))
            inputs[(topic, partition, offset)] = value
            keys[(topic, partition, offset)] = key
    run.figures["arrivals"] = _expiry_arrivals(run, records)
    expected = model.replay(
        records, policy_from(s), scenario.layout.period, scenario.close_seq, end
    )
    # The expectation above is built by the domain; the reference model (chaos/oracle.py)
    # shares no code with it and must agree, or the run fails whatever the worker did.
    disagreements = oracle_feed.disagreements(
        records,
        expected,
        oracle_feed.replay(
            records, policy_from(s), scenario.layout.period, scenario.close_seq, end
        ),
    )
    run.figures["oracle_disagreements"] = len(disagreements)
    if disagreements:
        run.note("oracle_disagreement", examples=disagreements[:5])
    actual = check.Actual(
        reminders=check.index_outputs(logs[s.topic_reminders], "reminder_id"),
        invoice_messages=check.index_outputs(logs[s.topic_invoices], "invoice_id"),
        dead_letters=check.index_dead_letters(logs[s.topic_dlq]),
        balances=check.newest_balances(logs[s.topic_balances]),
    )
    roles = {
        s.topic_usage: "usage",
        s.topic_account_events: "account",
        s.topic_reminders: "reminders",
        s.topic_invoices: "invoices",
        s.topic_dlq: "dlq",
        s.topic_balances: "balances",
    }
    conn = await asyncpg.connect(s.database_url)
    try:
        await check.read_database(conn, actual, s.topic_usage)
        run.figures["digest"] = await state_digest(conn, roles)
    finally:
        await conn.close()
    if run.reference is not None:
        r = run.reference
        ref_roles = {
            r.topic_usage: "usage",
            r.topic_account_events: "account",
            r.topic_reminders: "reminders",
            r.topic_invoices: "invoices",
            r.topic_dlq: "dlq",
            r.topic_balances: "balances",
        }
        conn = await asyncpg.connect(r.database_url)
        try:
            run.figures["digest_reference"] = await state_digest(conn, ref_roles)
            if run.figures["digest_reference"] != run.figures["digest"]:
                mine = await asyncpg.connect(s.database_url)
                try:
                    run.figures["digest_differences"] = check.state_differences(
                        await check.state_rows(mine, roles), await check.state_rows(conn, ref_roles)
                    )
                finally:
                    await mine.close()
        finally:
            await conn.close()
    report = check.compare(
        expected,
        actual,
        inputs,
        {"reminders": s.topic_reminders, "invoices": s.topic_invoices, "dlq": s.topic_dlq},
        keys,
    )
    run.figures["check_s"] = round(time.monotonic() - t, 1)
    return _results(run, records, expected, actual, report, end)


def _expiry_arrivals(run: Run, records: list[model.Record]) -> dict[str, int]:
    """How the usage of the expiring lots arrived, against those lots' moments."""
    lateness = timedelta(seconds=run.settings.lateness_allowance_s)
    out = {"in_time_before_expiry": 0, "in_time_late": 0, "too_late_after_allowance": 0}
    for r in records:
        expires, arrived = r.item.expires, r.arrived_at
        if expires is None or arrived is None:
            continue
        if r.item.label == "in_time_usage":
            out["in_time_before_expiry" if arrived < expires else "in_time_late"] += 1
        elif arrived > expires + lateness:
            out["too_late_after_allowance"] += 1
    return out


def _preconditions(run: Run, actual: check.Actual, end: datetime) -> list[str]:
    """The scenario's timing assumptions, checked after the fact (see `scenario`)."""
    scenario = run.scenario
    assert scenario is not None
    problems = []
    zone = run.settings.zone
    if period_of(end, zone) != period_of(scenario.layout.start, zone):
        problems.append("the run crossed a month boundary: another month became closable")
    late = {("usage", i.command.event_id) for i in scenario.too_late if i.command is not None}
    for account, kind in scenario.categories.items():
        first = actual.first_forfeit_at.get(account)
        last = max(
            (
                at
                for (source, event_id), at in actual.processed_at.items()
                if actual.processed_account.get((source, event_id)) == account
                and (source, event_id) not in late
            ),
            default=None,
        )
        if kind == "expiry" and last and first and last >= first:
            problems.append(
                f"{account}: an event was applied after its lot was forfeited "
                f"(applied {last.isoformat()}, forfeited {first.isoformat()})"
            )
    arrivals = run.figures.get("arrivals", {})
    if arrivals.get("in_time_late"):
        # Its notice and forfeit would then sit after a record that arrived after their moment.
        problems.append(f"{arrivals['in_time_late']} in-time usage record(s) arrived after expiry")
    if arrivals.get("too_late_after_allowance") != len(scenario.too_late):
        problems.append("too-late usage arrived within the lateness allowance")
    return problems


def _hostile(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Per hostile kind: its dead-letter code and the partitions of each input it went to."""
    out: dict[str, dict[str, Any]] = {}
    for item in scenario.items():
        if item.label.startswith("hostile:"):
            kind = out.setdefault(
                item.label.removeprefix("hostile:"), {"code": item.dead_code, "partitions": {}}
            )
            kind["partitions"].setdefault(item.source, set()).add(item.partition)
    for kind in out.values():
        kind["partitions"] = {k: sorted(v) for k, v in sorted(kind["partitions"].items())}
    return dict(sorted(out.items()))


def _results(
    run: Run,
    records: list[model.Record],
    expected: model.Expected,
    actual: check.Actual,
    report: check.Report,
    end: datetime,
) -> dict[str, Any]:
    scenario = run.scenario
    assert scenario is not None
    labels: dict[str, int] = {}
    for r in records:
        key = r.item.label.split(":")[0] if r.item.label.startswith("poison") else r.item.label
        labels[key] = labels.get(key, 0) + 1
    codes: dict[str, int] = {}
    for code in expected.dead.values():
        codes[code] = codes.get(code, 0) + 1
    kinds: dict[str, int] = {}
    for kind in scenario.categories.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    preconditions = _preconditions(run, actual, end)
    lost = gaps.explain(
        gaps.missing_ranges(
            [(r.topic, r.partition, r.offset) for r in records],
            set(expected.processed.values()),
            set(expected.dead),
            set(actual.processed.values()),
            set(actual.dead_letters),
        ),
        gaps.read_trace(run.run_dir, [w.name for w in run.workers]),  # not the reference
    )
    w = run.workers
    figures = run.figures
    dups = figures["duplicates_read_committed"]
    digests_equal = figures.get("digest_reference") in (None, figures.get("digest"))
    passed = (
        report.mismatches == 0
        and digests_equal
        and figures.get("oracle_disagreements", 0) == 0
        and not preconditions
        and sum(dups.values()) == 0
        and figures["lag"] == 0
        and actual.outbox_unsent == 0
    )
    return {
        "date": end.isoformat(timespec="seconds"),
        "seed": scenario.params.seed,
        "passed": passed,
        "events": len(records),
        "accounts": len(scenario.categories),
        "accounts_by_kind": kinds,
        "records_by_label": dict(sorted(labels.items())),
        "poison_share": round(len(expected.dead) / len(records), 4),
        "workers": len(w),
        "kills": sum(x.kills for x in w),
        "relay_kills": sum(x.relay_kills for x in w),
        "relay_kills_armed": run.o.relay_kills,
        "restarts": sum(x.restarts for x in w),
        "killed_for_good": sum(x.retired for x in w),
        "unexpected_exits": [f"{x.name}: {e}" for x in w for e in x.unexpected_exits],
        "postgres_down_s": figures.get("postgres_down_s"),
        "kafka_restarts": len(figures.get("kafka_restart_s", [])),
        "kafka_restart_s": figures.get("kafka_restart_s", []),
        "kafka_restart_in_transaction": figures.get("kafka_restart_in_transaction", []),
        "producer_resent_waves": run.producer.resent_waves if run.producer else 0,
        "dlq": len(expected.dead),
        "dlq_by_code": dict(sorted(codes.items())),
        "input_resends_skipped": len(expected.duplicates),
        "duplicates_on_output_topics": report.duplicates,
        "duplicates_read_committed": dups,
        "aborted_records_read_uncommitted": figures["aborted_records_read_uncommitted"],
        "expected": {
            "applied": len(expected.processed),
            "ledger_entries": len(expected.ledger),
            "reminders": len(expected.reminders),
            "invoices": len(expected.invoices),
        },
        "mismatches": report.mismatches,
        "digest": figures.get("digest"),
        "digest_reference": figures.get("digest_reference"),
        "digests_equal": digests_equal if "digest_reference" in figures else None,
        "digest_differences (faulty group | reference group)": figures.get("digest_differences"),
        "reference_exit_code": figures.get("reference_exit_code"),
        "outage": figures.get("outage"),
        "expiry_usage_arrivals": figures.get("arrivals"),
        "hostile_by_kind": _hostile(scenario),
        "oracle_disagreements": figures.get("oracle_disagreements"),
        "mismatches_by_category": dict(report.counts),
        "mismatch_lines": report.lines[:50],
        # Input ranges neither applied nor dead-lettered, with who owned and committed past them.
        "lost_ranges": lost[:20],
        "account_diffs": [
            {"account": a, "model": m, "actual": x} for a, m, x in report.accounts[:10]
        ],
        "preconditions_violated": preconditions,
        "lag": figures["lag"],
        "outbox_unsent": actual.outbox_unsent,
        "sigterm_exit_codes": figures.get("sigterm_exit_codes"),
        "wall_time_s": round(time.monotonic() - run.t0, 1),
        "phases_s": {
            k: figures[k]
            for k in ("services_up_s", "generate_s", "produce_s", "process_s", "check_s")
            if k in figures
        },
        "timeline": run.timeline,
        "run_dir": str(run.run_dir),
    }


async def main_async(o: Options) -> dict[str, Any]:
    prefix, db_name = _names(o.params.seed)
    run_dir = o.services_dir / "runs" / prefix
    run_dir.mkdir(parents=True, exist_ok=True)
    services = Services(o.services_dir, o.kafka_port, o.pg_port, run_dir / "services.log")
    t0 = time.monotonic()
    if o.start_services:
        await services.call("up")
    services_up_s = round(time.monotonic() - t0, 1)
    try:
        url = await create_database(services.admin_url, db_name)
        settings = _settings(services, url, prefix)
        topics = _topics(settings)
        await create_topics(services.bootstrap, topics)
        reference = ref_topics = None
        if o.reference:
            ref_url = await create_database(services.admin_url, db_name + "_ref")
            reference = _reference_settings(settings, ref_url, prefix + "-ref")
            ref_topics = _topics(reference)
            await create_topics(services.bootstrap, ref_topics, inputs=False)
        run = Run(o, services, run_dir, settings, topics, t0=t0, reference=reference)
        run.figures["services_up_s"] = services_up_s
        try:
            results = await _execute(run)
        finally:
            for worker in [*run.workers, *([run.ref_worker] if run.ref_worker else [])]:
                await worker.kill()
            for probe in run.probes():
                await probe.close()
        if results["passed"]:  # a failed run keeps its data for inspection
            await delete_topics(services.bootstrap, topics)
            await drop_database(services.admin_url, db_name)
            if ref_topics is not None:
                await delete_topics(services.bootstrap, ref_topics, inputs=False)
                await drop_database(services.admin_url, db_name + "_ref")
        return results
    finally:
        if o.stop_services:
            await services.call("down")


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m chaos.runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Options(Params())
    p.add_argument("--events", type=int, default=d.params.events)
    p.add_argument("--accounts", type=int, default=d.params.accounts)
    p.add_argument("--seed", type=int, default=d.params.seed)
    p.add_argument("--poison-share", type=float, default=d.params.poison_share)
    p.add_argument(
        "--expiry-from-s",
        type=float,
        default=d.params.expiry_from_s,
        help="first lot expiry, seconds after the scenario is laid out",
    )
    p.add_argument("--expiry-spread-s", type=float, default=d.params.expiry_spread_s)
    p.add_argument("--kills", type=int, default=d.kills, help="SIGKILLs, each with a restart")
    p.add_argument(
        "--relay-kills",
        type=int,
        default=d.relay_kills,
        help="hard exits of a relay between its Kafka commit and the outbox update",
    )
    p.add_argument("--pg-stop-s", type=float, default=d.pg_stop_s, help="0: no outage")
    p.add_argument("--kafka-restarts", type=int, default=d.kafka_restarts)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--no-retire", action="store_true", help="never kill a worker for good")
    p.add_argument(
        "--no-outage", action="store_true", help="no outage of the group while lots expire"
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="no reference group (no digest comparison with a run without worker faults)",
    )
    p.add_argument("--rate", type=float, default=d.rate, help="events/s produced; 0: no limit")
    p.add_argument("--services-dir", type=Path, default=d.services_dir)
    p.add_argument("--kafka-port", type=int, default=d.kafka_port)
    p.add_argument("--pg-port", type=int, default=d.pg_port)
    p.add_argument("--keep-services", action="store_true", help="leave them running")
    p.add_argument("--results", type=Path, default=d.results, help="JSON results file")
    p.add_argument("--report", type=Path, default=d.report, help="Markdown results file")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s)
    a = p.parse_args(argv)
    params = Params(
        a.events,
        a.accounts,
        a.seed,
        a.poison_share,
        expiry_from_s=a.expiry_from_s,
        expiry_spread_s=a.expiry_spread_s,
    )
    return Options(
        params,
        a.kills,
        a.relay_kills,
        a.pg_stop_s,
        a.kafka_restarts,
        a.workers,
        not a.no_retire,
        not a.no_outage,
        not a.no_reference,
        a.rate,
        a.services_dir.resolve(),
        a.kafka_port,
        a.pg_port,
        True,
        not a.keep_services,
        a.results,
        a.report,
        a.timeout_s,
    )


def _refuse_shared(o: Options) -> None:
    """The run stops and starts its services: never the ones others test against."""
    shared_dir = (ROOT / ".local").resolve()
    if o.services_dir.resolve() == shared_dir or {o.kafka_port, o.pg_port} & {19092, 15432}:
        raise SystemExit(
            f"refusing to run chaos against the shared services ({shared_dir}, "
            "127.0.0.1:19092 / 15432): pick another --services-dir and ports"
        )


def main(argv: list[str] | None = None) -> int:
    o = parse(sys.argv[1:] if argv is None else argv)
    _refuse_shared(o)
    # Settings come from the run alone: BILLING_* of the caller's shell (e.g. `make test`
    # pointing at the shared services) must reach neither the workers nor this process.
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        del os.environ[key]
    results = asyncio.run(main_async(o))
    for line in summary_lines(results):
        print(line)
    for path, text in (
        (o.results, orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()),
        (o.report, render_markdown(results)),
    ):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
    run_copy = Path(results["run_dir"]) / "results.json"
    run_copy.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
