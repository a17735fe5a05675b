"""`billing-worker demo`: produce simulated traffic and watch the worker bill it, live.

Everything shown is read from the broker and PostgreSQL, not from the worker process, so the
view is right whichever and however many workers run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from worker.adapters.kafka_admin import OffsetReader, retrying
from worker.adapters.kafka_connection import close_client, kafka_client_args
from worker.adapters.migrate import check_schema
from worker.adapters.observe import balances
from worker.adapters.postgres import load_account
from worker.builders import policy_from
from worker.config import Settings
from worker.domain.balance import Status, status_of
from worker.domain.forecast import Forecast, window_days
from worker.entrypoints.traffic import Event, Traffic
from worker.errors import is_retriable

SHOWN_ACCOUNTS = 6
# How long the view asks again for the output topics' end offsets it counts from: a freshly
# formatted broker may not answer the first reads (metadata, leaders) yet.
BASELINE_RETRY_S = 30.0


@dataclass(frozen=True)
class Options:
    rate: float = 20.0
    duration_s: float = 0.0  # 0: until interrupted
    accounts: int = 20
    malformed_share: float = 0.02
    seed: int | None = None


@dataclass
class Totals:
    """What the demo produced, and what it saw come out, since it started."""

    produced: int = 0
    malformed: int = 0
    failed: int = 0
    accounts: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """One reading of the broker and the database for the live view."""

    at: float
    consumed: int | None = None  # sum of the group's committed offsets
    lag: int | None = None
    published: dict[str, int] = field(default_factory=dict)  # output topic -> end offset
    balances: list[asyncpg.Record] = field(default_factory=list)
    forecasts: dict[str, tuple[Status, Forecast]] = field(default_factory=dict)
    error: str | None = None


class DemoError(Exception):
    """The demo cannot run (e.g. its topics do not exist)."""


async def run_demo(
    settings: Settings, options: Options, console: Console, stop: asyncio.Event | None = None
) -> Totals:
    """Produce until `duration_s` is up or `stop` is set; returns what was produced."""
    stop = stop or asyncio.Event()
    rng = random.Random(options.seed)
    run_id = uuid.UUID(int=rng.getrandbits(128)).hex[:6]
    traffic = Traffic(run_id, options.accounts, rng, options.malformed_share)
    totals = Totals(accounts=list(traffic.account_ids))
    async with OffsetReader(kafka_client_args(settings), client_id="billing-demo") as reader:
        await _check_topics(reader, settings)
        producer = AIOKafkaProducer(
            **kafka_client_args(settings),
            client_id="billing-demo",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        view = _View(settings, reader, traffic.account_ids[:SHOWN_ACCOUNTS], options, totals)
        try:
            await producer.start()
            with Live(
                view.render(), console=console, refresh_per_second=4, transient=False
            ) as live:
                await view.baseline()
                pacing = asyncio.create_task(
                    _produce(producer, settings, traffic, options, totals, stop)
                )
                while not pacing.done():
                    live.update(view.render(await view.read()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(pacing), timeout=1.0)
                pacing.result()
                live.update(view.render(await view.read()))
        finally:
            try:
                await close_client(producer)
            finally:
                await view.close()
    return totals


async def _check_topics(reader: OffsetReader, settings: Settings) -> None:
    topics = [
        settings.topic_usage,
        settings.topic_account_events,
        settings.topic_reminders,
        settings.topic_invoices,
        settings.topic_dlq,
    ]
    present = {tp.topic for tp in await reader.partitions(topics)}
    missing = [t for t in topics if t not in present]
    if missing:
        raise DemoError(
            f"missing topics {', '.join(missing)}: start them with `scripts/services up`"
        )


async def _produce(
    producer: AIOKafkaProducer,
    settings: Settings,
    traffic: Traffic,
    options: Options,
    totals: Totals,
    stop: asyncio.Event,
) -> None:
    """The opening events at once, then `rate` events per second until done."""
    topics = {"usage": settings.topic_usage, "account": settings.topic_account_events}
    zone = settings.zone
    await _send(producer, topics, traffic.opening(datetime.now(zone)), totals)
    started = time.monotonic()
    steady = 0
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if options.duration_s and elapsed >= options.duration_s:
            return
        due = int(elapsed * options.rate) - steady
        if due > 0:
            now = datetime.now(zone)
            await _send(producer, topics, [traffic.next(now) for _ in range(due)], totals)
            steady += due
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.05)


async def _send(
    producer: AIOKafkaProducer, topics: dict[str, str], events: list[Event], totals: Totals
) -> None:
    futures = [
        await producer.send(topics[e.source], e.value, key=e.account_id.encode()) for e in events
    ]
    for event, outcome in zip(
        events, await asyncio.gather(*futures, return_exceptions=True), strict=True
    ):
        if isinstance(outcome, BaseException):
            totals.failed += 1
            continue
        totals.produced += 1
        totals.malformed += event.malformed


class _View:
    """Reads the broker and the database once a second and renders the dashboard."""

    def __init__(
        self,
        settings: Settings,
        reader: OffsetReader,
        shown: list[str],
        options: Options,
        totals: Totals,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.shown = shown
        self.options = options
        self.totals = totals
        self.outputs = [settings.topic_reminders, settings.topic_invoices, settings.topic_dlq]
        self.conn: asyncpg.Connection | None = None
        self.first: Snapshot | None = None
        self.last: Snapshot | None = None
        self.previous: Snapshot | None = None
        self.produced_before = 0

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def baseline(
        self,
        retry_s: float = BASELINE_RETRY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """The output topics' end offsets before any traffic, which the view counts from.

        Asked again, with backoff, until every output topic answers or `retry_s` is up: a
        single failed read would leave the counts at "–" for the whole run.
        """
        snap = Snapshot(at=time.monotonic())
        try:
            snap.published = await retrying(self._published, retry_s, sleep)
        except (KafkaError, OSError, TimeoutError) as exc:
            snap.error = f"broker: {type(exc).__name__}"
        await self._read_group(snap)
        self.first = self.last = snap

    async def read(self) -> Snapshot:
        snap = Snapshot(at=time.monotonic())
        await self._read_group(snap)
        try:
            snap.published = await self._published()
        except (KafkaError, OSError, TimeoutError) as exc:
            snap.error = _joined(snap.error, f"broker: {type(exc).__name__}")
        await self._read_database(snap)
        self.previous, self.last = self.last, snap
        return snap

    async def _read_group(self, snap: Snapshot) -> None:
        """The group's committed offsets and lag; apart from the outputs' ends, because a
        fresh broker answers group requests only once its offsets topic exists."""
        try:
            offsets = await self.reader.committed_and_end(
                self.settings.consumer_group,
                [self.settings.topic_usage, self.settings.topic_account_events],
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            snap.error = _joined(snap.error, f"broker: {type(exc).__name__}")
            return
        snap.consumed = sum(c or 0 for c, _ in offsets.values())
        snap.lag = sum(max(end - (c or 0), 0) for c, end in offsets.values())

    async def _published(self) -> dict[str, int]:
        """Sum of the end offsets per output topic; raises unless every one answered."""
        published: dict[str, int] = {}
        for tp, end in (await self.reader.end_offsets(self.outputs)).items():
            published[tp.topic] = published.get(tp.topic, 0) + end
        missing = [t for t in self.outputs if t not in published]
        if missing:
            raise UnknownTopicOrPartitionError(", ".join(missing))  # retriable
        return published

    async def _read_database(self, snap: Snapshot) -> None:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await asyncpg.connect(self.settings.database_url, timeout=2)
                await check_schema(self.conn)  # a database it cannot read ends the demo: exit 5
            snap.balances = await balances(self.conn, self.shown)
            snap.forecasts = await self._forecasts(self.conn)
        except Exception as exc:
            if not is_retriable(exc) and not isinstance(exc, asyncpg.PostgresError):
                raise
            self.conn = None
            snap.error = _joined(snap.error, f"database: {exc!r}")

    async def _forecasts(self, conn: asyncpg.Connection) -> dict[str, tuple[Status, Forecast]]:
        """Status and forecast of every account shown, as of now."""
        now = datetime.now(UTC)
        policy = policy_from(self.settings)
        since = window_days(now, policy.zone)[-1]
        forecasts = {}
        for account_id in self.shown:
            account = await load_account(conn, account_id, since)
            if account is not None:
                forecasts[account_id] = (status_of(account), account.forecast_at(now, policy))
        return forecasts

    def _rate(self, value: int | None, before: int | None, seconds: float) -> str:
        if value is None or before is None or seconds <= 0:
            return "–"
        return f"{(value - before) / seconds:,.0f}/s"

    def _since_start(self, topic: str, snap: Snapshot) -> str:
        first = self.first.published.get(topic) if self.first else None
        now = snap.published.get(topic)
        return "–" if first is None or now is None else f"{now - first:,}"

    def render(self, snap: Snapshot | None = None) -> Group:
        o, t = self.options, self.totals
        title = (
            f"billing demo — {o.rate:g} events/s, "
            + (f"{o.duration_s:g} s" if o.duration_s else "until Ctrl-C")
            + f", {o.accounts} accounts, group {self.settings.consumer_group}"
        )
        flow = Table(
            title=title,
            caption="in: events committed by the group; out: messages "
            "published from the outbox; lag: from committed offsets",
        )
        for column in ("produced", "bad", "in/s", "out/s", "lag", "reminders", "invoices", "DLQ"):
            flow.add_column(column, justify="right")
        if snap is None:
            flow.add_row(*["…"] * 8)
            return Group(flow)
        prev = self.previous
        seconds = snap.at - prev.at if prev else 0.0
        out_now = sum(snap.published.values()) if snap.published else None
        out_before = sum(prev.published.values()) if prev and prev.published else None
        flow.add_row(
            f"{t.produced:,}",
            f"{t.malformed:,}",
            self._rate(snap.consumed, prev.consumed if prev else None, seconds),
            self._rate(out_now, out_before, seconds),
            "–" if snap.lag is None else f"{snap.lag:,}",
            self._since_start(self.settings.topic_reminders, snap),
            self._since_start(self.settings.topic_invoices, snap),
            self._since_start(self.settings.topic_dlq, snap),
        )
        accounts = Table(
            "account",
            "plan",
            "balance JPY",
            "overdraft JPY",
            "postpay due JPY",
            "status",
            "JPY/day",
            "runs out on",
            "expiring unused",
            "package",
            title="a few accounts (from PostgreSQL) and their forecasts",
        )
        for row in snap.balances:
            status, f = snap.forecasts.get(row["account_id"], ("", None))
            accounts.add_row(
                row["account_id"],
                row["plan"],
                f"{row['balance_jpy']:,}",
                f"{row['overdraft_jpy']:,}",
                f"{row['postpay_due_jpy']:,}",
                status,
                *(
                    ("", "", "", "")
                    if f is None
                    else (
                        f"{f.usage_jpy_per_day:,}",
                        "–" if f.runs_out_on is None else f.runs_out_on.isoformat(),
                        f"{f.expiring_unused_jpy:,}",
                        f"{f.suggested_package_jpy:,}",
                    )
                ),
            )
        parts: list[Table | str] = [flow, accounts]
        if snap.error:
            parts.append(f"[yellow]unavailable: {snap.error}[/yellow]")
        if t.failed:
            parts.append(f"[red]{t.failed} events could not be produced[/red]")
        return Group(*parts)


def _joined(error: str | None, more: str) -> str:
    return more if error is None else f"{error}, {more}"


def main(settings: Settings, options: Options) -> int:
    """Run the demo in its own event loop; Ctrl-C or SIGTERM ends it cleanly (exit 0)."""
    console = Console()

    async def go() -> Totals:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_demo(settings, options, console, stop)

    try:
        totals = asyncio.run(go())
    except DemoError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    console.line()
    console.print(
        f"produced {totals.produced:,} events ({totals.malformed:,} malformed on "
        f"purpose), {totals.failed:,} failed"
    )
    return 0 if totals.failed == 0 else 1
