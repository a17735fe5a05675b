"""`billing-worker`: run the worker and the operations around it."""

from __future__ import annotations

import asyncio
import gc
import re
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import orjson
import typer
from aiokafka.errors import KafkaError

from worker import logs, redact
from worker.config import Settings, SettingsError, load_settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SMS billing worker: prepaid credit lots, postpay invoices, reminders.",
)
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter topic tools.")
app.add_typer(dlq_app, name="dlq")

T = TypeVar("T")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(redact.scrub(str(exc)), err=True)
        raise typer.Exit(78) from exc
    logs.configure(settings.log_level, settings.log_json)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _preflight(settings: Settings, *, kafka: bool = True, postgres: bool = True) -> None:
    """Stop at once, in one line, when the broker or database refuses the credentials."""
    from worker.adapters import preflight

    async def check() -> None:
        if postgres:
            await preflight.check_postgres(settings)
        if kafka:
            await preflight.check_kafka(settings)

    try:
        _run(check())
    except preflight.AccessRefused as exc:
        typer.echo(redact.scrub(f"cannot start: {exc}"), err=True)
        raise typer.Exit(77) from None


def _tune_gc() -> None:
    """Look for reference cycles less often. A batch keeps tens of thousands of young objects
    alive; with the default thresholds (700, 10, 10) the collector rescans them again and again
    and costs a fifth of the throughput (benchmarks/RESULTS.md)."""
    gc.freeze()  # what imports and settings built lives for the whole process: never rescanned
    gc.set_threshold(50_000, 20, 100)


@app.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""
    from worker.app import UncleanShutdown, Worker

    settings = _settings()
    _preflight(settings)
    _tune_gc()
    try:
        _run(Worker(settings).run())
    except SettingsError as exc:
        typer.echo(redact.scrub(str(exc)), err=True)
        raise typer.Exit(78) from exc
    except UncleanShutdown as exc:
        typer.echo(redact.scrub(str(exc)), err=True)
        raise typer.Exit(1) from exc


@app.command()
def migrate() -> None:
    """Apply database migrations that are missing (idempotent)."""
    import asyncpg

    from worker.adapters.migrate import migrate as apply

    settings = _settings()
    _preflight(settings, kafka=False)

    async def go() -> list[str]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await apply(conn)
        finally:
            await conn.close()

    applied = _run(go())
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@app.command()
def account(
    account_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    entries: Annotated[int, typer.Option(help="How many latest ledger entries to show.")] = 10,
) -> None:
    """Show an account: plan, balance, overdraft, reminder, lots, latest ledger entries."""
    from worker.entrypoints.views import account_view, render_account

    settings = _settings()
    _preflight(settings, kafka=False)
    view = _run(account_view(settings, account_id, entries))
    if view is None:
        typer.echo(f"unknown account: {account_id}", err=True)
        raise typer.Exit(2)
    if as_json:
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_account(view)


@app.command()
def lag(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    max_lag: Annotated[int | None, typer.Option(help="Exit 1 when the total lag is above.")] = None,
) -> None:
    """Consumer lag of the group from the broker's committed offsets (works with no worker)."""
    from worker.adapters.kafka_admin import group_lag

    settings = _settings()
    _preflight(settings, postgres=False)
    try:
        report = _run(group_lag(settings))
    except (KafkaError, OSError, TimeoutError) as exc:
        typer.echo(f"cannot read the group's offsets: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(3) from exc
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for row in report["partitions"]:
            typer.echo(
                f"{row['topic']:<32} {row['partition']:>4} committed={row['committed']} "
                f"end={row['end']} lag={row['lag']}"
            )
        typer.echo(f"total lag: {report['total']}")
    if max_lag is not None and report["total"] > max_lag:
        raise typer.Exit(1)


@app.command()
def demo(
    rate: Annotated[float, typer.Option(min=0.1, help="Events per second.")] = 20.0,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to run; 0 = until Ctrl-C.")] = 0.0,
    accounts: Annotated[int, typer.Option(min=1, help="Demo accounts to open.")] = 20,
    malformed: Annotated[float, typer.Option(min=0, max=1, help="Share of bad events.")] = 0.02,
    seed: Annotated[int | None, typer.Option(help="Replay the same traffic.")] = None,
) -> None:
    """Simulated SMS traffic with a live view of lag, output, DLQ and balances."""
    from worker.entrypoints.demo import Options
    from worker.entrypoints.demo import main as run_demo

    settings = _settings()
    _preflight(settings)
    raise typer.Exit(run_demo(settings, Options(rate, duration, accounts, malformed, seed)))


@app.command("close-month")
def close_month(
    period: Annotated[str, typer.Argument(help="The month to close, YYYY-MM (business zone).")],
    wait_s: Annotated[
        float, typer.Option(help="How long to wait for the group to catch up.")
    ] = 60.0,
) -> None:
    """Close a month by hand: one invoice per postpay account, exactly once."""
    from worker.entrypoints.month_close import close_by_hand

    settings = _settings()
    _preflight(settings)
    if not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", period):
        typer.echo(f"not a month: {period!r} (expected YYYY-MM)", err=True)
        raise typer.Exit(2)
    code, message = _run(close_by_hand(settings, period, wait_s))
    typer.echo(message, err=code != 0)
    raise typer.Exit(code)


@dlq_app.command("replay")
def dlq_replay(
    error_code: Annotated[
        list[str] | None,
        typer.Option("--error-code", help="Replay only these error codes (repeatable)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be replayed.")] = False,
) -> None:
    """Send dead letters back to their source topic (e.g. after a rate was added)."""
    from worker.entrypoints.dlq import replay

    settings = _settings()
    _preflight(settings, postgres=False)
    counts = _run(replay(settings, set(error_code or []), dry_run))
    for what, n in sorted(counts.items()):
        typer.echo(f"{what}: {n}")
    if not counts:
        typer.echo("nothing to replay")


def main() -> None:
    app()
