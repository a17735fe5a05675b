"""`billing-worker`: run the worker and the operations around it."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import typer

from worker import logs
from worker.config import Settings, load_settings
from worker.entrypoints.failures import is_usage_error
from worker.entrypoints.failures import report as report_failure
from worker.errors import BadArgument, ExitCode, Failure, UnknownAccount


def _pretty_tracebacks() -> bool:
    """Rich's boxed tracebacks only for a person at a terminal who asked for console logs;
    everywhere else they would break a pipeline that reads one JSON object per line."""
    _, json = logs.preferences_from_env(os.environ)
    return sys.stderr.isatty() and not json


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=_pretty_tracebacks(),
    # Locals would show the settings, and with them the database password.
    pretty_exceptions_show_locals=False,
)
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter topic tools.")
app.add_typer(dlq_app, name="dlq")
outbox_app = typer.Typer(no_args_is_help=True, help="Outbox tools: parked rows, the output log.")
app.add_typer(outbox_app, name="outbox")

T = TypeVar("T")
P = ParamSpec("P")

# (level, json) once the settings are read; before that the environment is read leniently.
_log_preferences: tuple[str, bool] | None = None


def _settings(*, one_shot: bool = True) -> Settings:
    global _log_preferences
    settings = load_settings()
    traced = frozenset(name.strip() for name in settings.log_debug.split(",") if name.strip())
    logs.configure(settings.log_level, settings.log_json, quiet_libraries=one_shot, debug=traced)
    _log_preferences = (settings.log_level, settings.log_json)
    return settings


def _preflight(settings: Settings, *, kafka: bool = True, postgres: bool = True) -> None:
    """Stop at once (AccessRefused, exit 77) when the broker or database refuses the
    credentials or certificates; an unreachable one is left to the command's own handling."""
    from worker.adapters import preflight

    async def check() -> None:
        if postgres:
            await preflight.check_postgres(settings)
        if kafka:
            await preflight.check_kafka(settings)

    _run(check())


def _guarded(command: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Every command ends in one clear line and a documented exit code, never a traceback
    (except at BILLING_LOG_LEVEL=DEBUG)."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise  # an exit code chosen on purpose
            except (Exception, KeyboardInterrupt) as exc:
                if is_usage_error(exc):
                    raise  # Click reports it (see main)
                level, json = _log_format()
                raise typer.Exit(report_failure(exc, command, level, json)) from None

        return guarded

    return decorate


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _package_version() -> str:
    try:
        return version("sms-billing-worker")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        from worker.adapters.migrate import needed_version

        typer.echo(f"billing-worker {_package_version()} (database schema {needed_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version and the database schema it needs, then exit.",
        ),
    ] = False,
) -> None:
    """SMS billing worker: prepaid credit lots, postpay invoices, reminders."""


def _tune_gc() -> None:
    """Look for reference cycles less often. A batch keeps tens of thousands of young objects
    alive; with the default thresholds (700, 10, 10) the collector rescans them again and again
    and costs a fifth of the throughput (benchmarks/RESULTS.md)."""
    gc.freeze()  # what imports and settings built lives for the whole process: never rescanned
    gc.set_threshold(50_000, 20, 100)


@app.command()
@_guarded("run")
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""
    from worker.app import Worker

    settings = _settings(one_shot=False)
    _preflight(settings)
    _tune_gc()
    _run(Worker(settings).run())


@app.command()
@_guarded("migrate")
def migrate() -> None:
    """Apply database migrations that are missing (idempotent)."""
    from worker.adapters.migrate import migrate as apply
    from worker.adapters.reach import connect_database

    settings = _settings()
    _preflight(settings, kafka=False)

    async def go() -> list[str]:
        conn = await connect_database(settings, schema=False)
        try:
            return await apply(conn)
        finally:
            await conn.close()

    applied = _run(go())
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@app.command()
@_guarded("account")
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
        raise UnknownAccount(
            f"unknown account: {account_id}: check the id (an account exists once an event"
            " for it was applied)"
        )
    if as_json:
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_account(view)


@app.command()
@_guarded("lag")
def lag(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    max_lag: Annotated[int | None, typer.Option(help="Exit 1 when the total lag is above.")] = None,
) -> None:
    """Consumer lag of the group from the broker's committed offsets (works with no worker).

    Offset lag and time lag (how long ago the oldest uncommitted record reached Kafka) per
    input partition. Retriable broker errors are retried for 15 s; then it exits 3.
    """
    from worker.adapters.kafka_admin import group_lag
    from worker.adapters.reach import reach_kafka
    from worker.entrypoints.views import lag_table

    settings = _settings()
    _preflight(settings, postgres=False)
    report = _run(reach_kafka(settings, lambda: group_lag(settings)))
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        typer.echo(lag_table(report))
    if max_lag is not None and report["total"] > max_lag:
        raise typer.Exit(1)


@app.command()
@_guarded("demo")
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

    settings = _settings(one_shot=False)
    _preflight(settings)
    raise typer.Exit(run_demo(settings, Options(rate, duration, accounts, malformed, seed)))


@app.command("close-month")
@_guarded("close-month")
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
        raise BadArgument(f"not a month: {period!r}: give it as YYYY-MM, e.g. 2026-04")
    code, message = _run(close_by_hand(settings, period, wait_s))
    if code == ExitCode.BROKER_UNREACHABLE:
        raise Failure(message, exit_code=code, error_code="invoices_not_published")
    if code != 0:
        raise Failure(message, exit_code=code, error_code="close_month_refused")
    typer.echo(message)


@dlq_app.command("replay")
@_guarded("dlq replay")
def dlq_replay(
    error_code: Annotated[
        list[str] | None,
        typer.Option("--error-code", help="Replay only these error codes (repeatable)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be replayed.")] = False,
) -> None:
    """Send the dead letters present at the start back to their source topic."""
    from worker.entrypoints.dlq import replay

    settings = _settings()
    _preflight(settings, postgres=False)
    report = _run(replay(settings, set(error_code or []), dry_run))
    for line in report.lines(dry_run):
        typer.echo(line, err=line.startswith("refused"))
    if report.refused:
        raise typer.Exit(1)


@outbox_app.command("parked")
@_guarded("outbox parked")
def outbox_parked(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """List the outbox rows the broker refused (parked), oldest first, with the reason."""
    from worker.entrypoints.outbox import list_parked, parked_table

    settings = _settings()
    _preflight(settings, kafka=False)
    rows = _run(list_parked(settings))
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        typer.echo(parked_table(rows))


@outbox_app.command("release")
@_guarded("outbox release")
def outbox_release(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox ids (see `parked`).")] = None,
    release_all: Annotated[bool, typer.Option("--all", help="Release every parked row.")] = False,
) -> None:
    """Send parked rows again (after raising the topic's limit): the relay numbers them anew."""
    from worker.entrypoints.outbox import release_parked

    if bool(ids) == release_all:
        raise BadArgument("give the outbox ids to release, or --all")
    settings = _settings()
    _preflight(settings, kafka=False)
    done = _run(release_parked(settings, None if release_all else ids))
    typer.echo(f"released {len(done.released)}" + "".join(f" {m}" for m in done.released))
    for message_id, newer in done.superseded:
        typer.echo(f"not sent {message_id}: superseded by {newer}")


@outbox_app.command("adopt-log")
@_guarded("outbox adopt-log")
def outbox_adopt_log() -> None:
    """After restoring the database from a backup: number on after the output log's highest
    outbox_seq, so that recovery stays exact. Run it with every worker stopped."""
    from worker.entrypoints.outbox import adopt_log

    settings = _settings()
    _preflight(settings)
    typer.echo(_run(adopt_log(settings)))


def _log_format() -> tuple[str, bool]:
    """(level, json) for a failure report; configures logging if no command did yet."""
    if _log_preferences is not None:
        return _log_preferences
    level, json = logs.preferences_from_env(os.environ)
    logs.configure(level, json, quiet_libraries=True)
    return level, json


def main() -> None:
    if _pretty_tracebacks():
        app()  # a person at a terminal who asked for console logs: Click's own messages
        return
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        if not is_usage_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined] # the help text, as with no arguments
            code = 0
        else:
            ctx = getattr(exc, "ctx", None)
            path = str(getattr(ctx, "command_path", "")).removeprefix("billing-worker").strip()
            level, json = _log_format()
            code = report_failure(exc, path, level, json)
    sys.exit(code if isinstance(code, int) else 0)
