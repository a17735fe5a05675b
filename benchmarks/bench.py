"""`make bench`: ceilings, end-to-end throughput, latency, memory and scaling in one run.

    python -m benchmarks.bench --events 1000000 --accounts 10000 --seed 1

Needs the services of `scripts/services up` (BILLING_SERVICES_* select another pair).
Every topic and database it makes is named `bench-<run>` / `bench_<run>` and is removed at
the end (`--keep` leaves them). Figures are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from benchmarks import report
from benchmarks.base import BaseError, BaseRevision, install_base
from benchmarks.ceilings import kafka_ceiling, postgres_ceiling
from benchmarks.kit import (
    ROOT,
    Services,
    create_database,
    create_topics,
    delete_topics,
    drop_databases,
    git_commit,
    machine,
    partition_of,
    produce,
)
from benchmarks.workers import (
    BenchError,
    LatencyLevel,
    Processes,
    Topics,
    compared_digests,
    run_backlog,
    run_latency,
)
from benchmarks.workload import (
    Generator,
    Mix,
    Workload,
    latency_setup,
    main_workload,
    rss_workload,
)
from worker.config import Settings

PHASES = ("kafka", "postgres", "one", "ab", "two", "three", "hot", "latency", "rss")
# "ab" needs the revision to compare with: only when asked for.
DEFAULT_PHASES = tuple(phase for phase in PHASES if phase != "ab")
BACKLOGS = (("one", 1), ("two", 2), ("three", 3))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="make bench BENCH_ARGS=...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--events", type=int, default=1_000_000, help="usage events (1,000,000)")
    ap.add_argument("--accounts", type=int, default=10_000, help="accounts (10,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rss-accounts", type=int, default=100_000, help="accounts of the memory run (100,000)"
    )
    ap.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="how long usage is sent at each load level (30)",
    )
    ap.add_argument(
        "--latency-levels",
        default="10,25,50,90",
        help="load levels of the latency run, in %% of the 1-process rate (10,25,50,90)",
    )
    ap.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="the 1-process rate the load levels are shares of, when that run is skipped",
    )
    ap.add_argument(
        "--ab-base",
        metavar="REV",
        help="phase ab (and the latency levels): the git revision to compare with; it is "
        "exported and installed with its own dependencies into a venv of its own "
        "(cached under <services dir>/ab-base/<commit>)",
    )
    ap.add_argument(
        "--ab-rounds", type=int, default=3, help="phase ab: base, this, base, this ... (3)"
    )
    ap.add_argument("--partitions", type=int, default=6, help="input partitions (6)")
    ap.add_argument(
        "--hot-share",
        type=float,
        default=0.5,
        help="hot phase: share of usage sent by one account (0.5)",
    )
    ap.add_argument("--hot-processes", type=int, default=3, help="hot phase: worker processes (3)")
    ap.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all but ab)",
    )
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="BILLING_X=V",
        help="extra setting for the worker processes (repeatable)",
    )
    ap.add_argument(
        "--worker-command",
        default="",
        help="run this instead of `billing-worker run` (e.g. under a profiler)",
    )
    ap.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "RESULTS.md",
        help="file the entry is appended to ('-': none)",
    )
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the topics and databases")
    args = ap.parse_args(argv)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {sorted(unknown)}")
    if "ab" in args.phases.split(",") and args.ab_base is None:
        ap.error("phase ab needs --ab-base")
    if args.ab_rounds < 1:
        ap.error("--ab-rounds must be at least 1")
    return args


def say(text: str) -> None:
    print(f"[bench] {datetime.now(UTC):%H:%M:%S} {text}", flush=True)


class Bench:
    """One run: its names, its services and what it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.services = Services.from_env()
        self.run_id = uuid.uuid4().hex[:6]
        self.prefix = f"bench-{self.run_id}"
        self.db_prefix = f"bench_{self.run_id}"
        self.phases = set(args.phases.split(","))
        self.extra_env = dict(item.split("=", 1) for item in args.worker_env)
        self.batch = int(
            self.extra_env.get(
                "BILLING_BATCH_MAX_RECORDS", Settings.model_fields["batch_max_records"].default
            )
        )
        self.log_dir = self.services.services_dir / "bench-logs" / self.run_id
        self.base: BaseRevision | None = None
        self.start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
        self.results = report.Results(
            params={
                "workload": "",
                "command": "python -m benchmarks.bench " + shlex.join(sys.argv[1:]),
            },
            machine=machine(),
            commit=git_commit(),
            batch=self.batch,
            rss_accounts=args.rss_accounts,
        )

    def topics(self, inputs: str, outputs: str) -> Topics:
        return Topics.named(f"{self.prefix}-{inputs}", f"{self.prefix}-{outputs}")

    async def make_topics(self, topics: Topics, *, inputs: bool) -> None:
        wanted = {t: 3 for t in topics.outputs}
        if inputs:
            wanted.update({t: self.args.partitions for t in topics.inputs})
        await create_topics(
            self.services.bootstrap,
            wanted,
            frozenset({topics.balances}),
            frozenset(topics.inputs) if inputs else frozenset(),
        )

    def processes(self, topics: Topics, db_url: str, name: str, count: int) -> Processes:
        procs = Processes(
            self.services,
            topics,
            db_url,
            f"{self.prefix}-{name}",
            self.log_dir,
            count,
            self.extra_env,
        )
        if self.args.worker_command:
            procs.command = shlex.split(self.args.worker_command)
        return procs

    async def run(self) -> report.Results:
        args = self.args
        say(f"run {self.run_id}: Kafka {self.services.bootstrap}, logs in {self.log_dir}")
        if args.ab_base is not None:
            say(f"installing the base revision {args.ab_base} into its own venv ...")
            try:
                self.base = install_base(args.ab_base, self.services.services_dir / "ab-base")
            except BaseError as exc:
                raise BenchError(str(exc)) from exc
            self.results.base = self.base.label
            say(f"base revision {self.base.label}: {self.base.worker}")
        try:
            gen = Generator(args.seed, self.run_id, self.start)
            work = main_workload(gen, args.accounts, args.events)
            self.results.params["workload"] = describe(work, args)
            say(f"generated {work.total:,} records; {self.results.params['workload']}")
            main = self.topics("main", "main-out")
            await self.make_topics(main, inputs=True)
            t = time.perf_counter()
            await produce(self.services.bootstrap, main.account, args.partitions, work.account)
            await produce(self.services.bootstrap, main.usage, args.partitions, work.usage)
            say(f"loaded into {main.usage} and {main.account} in {time.perf_counter() - t:.1f} s")
            await self.ceilings(work, main)
            await self.backlogs(work, main)
            await self.ab(work, main)
            del work
            gc.collect()
            await self.hot()
            await self.latency(gen)
            await self.memory(gen)
        finally:
            if not args.keep:
                await delete_topics(self.services.bootstrap, self.prefix)
                await drop_databases(self.services, self.db_prefix)
        return self.results

    async def ceilings(self, work: Workload, main: Topics) -> None:
        if "kafka" in self.phases:
            self.results.kafka = await kafka_ceiling(
                self.services, main.inputs, self.args.partitions, work.total, self.batch
            )
            say(f"ceiling (a) Kafka read + decode: {self.results.kafka.rate:,.0f} ev/s")
        if "postgres" in self.phases:
            self.results.postgres = await postgres_ceiling(
                self.services, f"{self.db_prefix}_ceiling", work.rows, work.total, self.batch
            )
            say(f"ceiling (b) PostgreSQL COPY + commit: {self.results.postgres.rate:,.0f} ev/s")

    async def backlogs(self, work: Workload, main: Topics) -> None:
        timeout = max(300.0, work.total / 500)
        for phase, count in BACKLOGS:
            if phase not in self.phases:
                continue
            topics = Topics(main.usage, main.account, *self.topics("", f"{phase}-out").outputs)
            await self.make_topics(topics, inputs=False)
            db = await create_database(self.services, f"{self.db_prefix}_{phase}")
            say(f"{count} worker process(es) on the backlog ...")
            result = await run_backlog(self.processes(topics, db, phase, count), work, timeout)
            setattr(self.results, phase, result)
            say(
                f"{count} process(es): {result.rate:,.0f} ev/s in {result.seconds:.1f} s, "
                f"peak RSS {', '.join(f'{m:.0f}' for m in result.peak_rss_mb)} MB"
            )
            say(f"{count} process(es): digest {result.digest}")
        one, two = self.results.one, self.results.two
        if one is not None and two is not None and one.digest != two.digest:
            raise BenchError(f"1 and 2 processes billed differently: {one.digest} != {two.digest}")

    async def hot(self) -> None:
        """The main workload again, except that one account sends `--hot-share` of the usage:
        its partition (and the process that owns it) carries that share on its own."""
        if "hot" not in self.phases:
            return
        args = self.args
        gen = Generator(args.seed, self.run_id, self.start, Mix(hot_share=args.hot_share))
        work = main_workload(gen, args.accounts, args.events)
        per_partition = [0] * args.partitions
        for key, _ in work.usage:
            per_partition[partition_of(key, args.partitions)] += 1
        self.results.hot_partitions = per_partition
        topics = self.topics("hot", "hot-out")
        await self.make_topics(topics, inputs=True)
        await produce(self.services.bootstrap, topics.account, args.partitions, work.account)
        await produce(self.services.bootstrap, topics.usage, args.partitions, work.usage)
        db = await create_database(self.services, f"{self.db_prefix}_hot")
        count = args.hot_processes
        say(
            f"hot account ({args.hot_share:.0%} of usage; usage per partition {per_partition}): "
            f"{count} process(es) ..."
        )
        self.results.hot = await run_backlog(
            self.processes(topics, db, "hot", count), work, max(300.0, work.total / 500)
        )
        say(f"hot account: {self.results.hot.rate:,.0f} ev/s in {self.results.hot.seconds:.1f} s")

    async def ab(self, work: Workload, main: Topics) -> None:
        """The old revision's worker and this one on the same backlog, alternating."""
        if "ab" not in self.phases:
            return
        timeout = max(300.0, work.total / 500)
        for round_ in range(self.args.ab_rounds):
            for side in ("base", "this"):
                name = f"ab{round_}{side}"
                topics = Topics(main.usage, main.account, *self.topics("", f"{name}-out").outputs)
                await self.make_topics(topics, inputs=False)
                procs = await self.side(side, topics, name)
                say(f"A/B round {round_ + 1}: {side} worker on the backlog ...")
                result = await run_backlog(procs, work, timeout)
                self.results.ab.append((side, result))
                say(f"A/B round {round_ + 1}: {side} {result.rate:,.0f} ev/s, {result.digest}")
        if len(compared_digests(run.digest for _, run in self.results.ab)) > 1:
            say("A/B: the base and this revision billed the same input DIFFERENTLY")

    async def side(self, side: str, topics: Topics, name: str) -> Processes:
        """One process of this revision's worker, or of the base's, with a fresh database."""
        db = await create_database(
            self.services, f"{self.db_prefix}_{name}", migrated=side == "this"
        )
        procs = self.processes(topics, db, name, 1)
        if side == "base":
            assert self.base is not None
            # Its own venv: the base's code with the dependencies its own pyproject.toml names.
            procs.command = [str(self.base.worker), "run"]
            await _run_checked([str(self.base.worker), "migrate"], procs.env(0))
        return procs

    async def latency(self, gen: Generator) -> None:
        if "latency" not in self.phases:
            return
        full = self.results.one.rate if self.results.one else self.args.latency_rate
        if full <= 0:
            raise BenchError("the latency run needs the 1-process run or --latency-rate")
        accounts = self.args.accounts
        levels = []
        for pct in (float(x) for x in self.args.latency_levels.split(",")):
            rate = full * pct / 100
            count = max(int(rate * self.args.latency_seconds), 1)
            # The same skewed mix as the rate it is a share of; fresh accounts per level.
            setup, ids = latency_setup(gen, accounts, count, tag=f"{pct:g}")
            usage = Workload()
            begin = datetime.now(UTC)
            gen.usage(usage, ids, count, begin=begin, span_s=self.args.latency_seconds, skewed=True)
            levels.append(LatencyLevel(pct / 100, rate, setup, usage.usage, usage.usage_ids))
        sides = ("base", "this") if self.base is not None else ("this",)
        say(
            f"latency: levels {self.args.latency_levels} % of {full:,.0f} ev/s, "
            f"{self.args.latency_seconds:g} s each, {accounts:,} accounts per level, "
            f"worker(s) {' and '.join(sides)} alternating"
        )
        for level in levels:
            for side in sides:
                name = f"lat{level.share * 100:g}{side}"
                topics = self.topics(name, f"{name}-out")
                await self.make_topics(topics, inputs=True)
                procs = await self.side(side, topics, name)
                (lat,) = await run_latency(
                    procs,
                    [level],
                    (self.args.partitions, 3),
                    timeout_s=max(300.0, len(level.usage) / 200),
                )
                (self.results.latency if side == "this" else self.results.latency_base).append(lat)
                say(
                    f"latency at {lat.share:.0%} ({lat.target_rate:,.0f} ev/s), {side}: "
                    f"p50 {lat.percentile(0.5):.0f} ms, p99 {lat.percentile(0.99):.0f} ms "
                    f"over {len(lat.latencies_ms):,} reminders; load {lat.load}"
                )

    async def memory(self, gen: Generator) -> None:
        if "rss" not in self.phases:
            return
        work = rss_workload(gen, self.args.rss_accounts)
        topics = self.topics("rss", "rss-out")
        await self.make_topics(topics, inputs=True)
        await produce(self.services.bootstrap, topics.account, self.args.partitions, work.account)
        await produce(self.services.bootstrap, topics.usage, self.args.partitions, work.usage)
        db = await create_database(self.services, f"{self.db_prefix}_rss")
        say(f"memory: {work.total:,} events over {self.args.rss_accounts:,} accounts ...")
        self.results.rss = await run_backlog(
            self.processes(topics, db, "rss", 1), work, max(300.0, work.total / 500)
        )
        say(f"memory: peak RSS {max(self.results.rss.peak_rss_mb):.0f} MB")


def describe(work: Workload, args: argparse.Namespace) -> str:
    usage = len(work.usage)
    return (
        f"{usage:,} usage events ({work.duplicates / usage:.1%} duplicates, "
        f"{work.dead / usage:.2%} dead letters; mostly Japan, some abroad, multi-segment) "
        f"+ {len(work.account):,} account events over {args.accounts:,} accounts "
        f"(a few lots and a threshold each), seed {args.seed}, {args.partitions} partitions"
    )


def raw(results: report.Results) -> dict[str, object]:
    def runs(run: object) -> object:
        return None if run is None else {**vars(run), "cpu": vars(run.cpu)}  # type: ignore[attr-defined]

    return {
        "started": results.started.isoformat(),
        "commit": results.commit,
        "machine": results.machine,
        "params": results.params,
        "kafka_ceiling": results.kafka and vars(results.kafka),
        "postgres_ceiling": results.postgres and vars(results.postgres),
        "one": runs(results.one),
        "two": runs(results.two),
        "three": runs(results.three),
        "hot": runs(results.hot),
        "hot_partitions": results.hot_partitions,
        "rss": runs(results.rss),
        "ab_base": results.base,
        "speed_up": report.speed_up(results),
        "ab": [{"side": side, **(runs(run) or {})} for side, run in results.ab],
        "latency_base": [
            {
                "share": lat.share,
                "achieved_rate": lat.achieved_rate,
                "n": len(lat.latencies_ms),
                "p50_ms": lat.percentile(0.5),
                "p99_ms": lat.percentile(0.99),
                "load": lat.load,
            }
            for lat in results.latency_base
        ],
        "latency": [
            {
                "share": lat.share,
                "target_rate": lat.target_rate,
                "achieved_rate": lat.achieved_rate,
                "n": len(lat.latencies_ms),
                "p50_ms": lat.percentile(0.5),
                "p99_ms": lat.percentile(0.99),
                "load": lat.load,
                "stages": {k: vars(v) for k, v in lat.stages.items()},
            }
            for lat in results.latency
        ],
    }


async def _run_checked(command: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise BenchError(f"{shlex.join(command)} exited with {proc.returncode}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        results = asyncio.run(Bench(args).run())
    except BenchError as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    if results.latency and str(args.results) != "-":
        from benchmarks.plot import draw_latency  # matplotlib: only when there is a curve

        draw_latency(
            results.latency,
            results.latency_base,
            args.results.parent / "latency.png",
            report.LATENCY_TARGETS,
        )
        say(f"drew {args.results.parent / 'latency.png'}")
    text = report.entry(results)
    print("\n" + text)
    if str(args.results) != "-":
        report.append(args.results, text)
        say(f"appended to {args.results}")
    if args.json:
        args.json.write_bytes(orjson.dumps(raw(results), option=orjson.OPT_INDENT_2))
    if len(compared_digests(run.digest for _, run in results.ab)) > 1:
        print("[bench] FAILED: the A/B sides billed the same input differently", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
