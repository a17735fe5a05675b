"""How a failed command reports: one line (one JSON object in JSON mode) and an exit code."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

import asyncpg
from aiokafka.errors import KafkaError

from worker import logs, redact
from worker.adapters.reach import cause_of
from worker.config import SettingsError
from worker.errors import ExitCode, Failure

_DEBUG_HINT = "set BILLING_LOG_LEVEL=DEBUG to see where, and report it"


@dataclass(frozen=True)
class Report:
    """What the operator is told, and what the process exits with."""

    exit_code: int
    error_code: str
    message: str


def is_usage_error(exc: BaseException) -> bool:
    """Click's ClickException family (a wrong option, a missing argument). Recent Typer releases
    carry their own copy of Click, so the class is recognised by its shape, not imported."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def classify(exc: BaseException) -> Report:
    """The report for an exception that ended a command."""
    if isinstance(exc, Failure):
        return Report(int(exc.exit_code), exc.error_code, str(exc))
    if isinstance(exc, SettingsError):
        return Report(ExitCode.BAD_SETTING, "bad_setting", f"{exc}: fix it and start again")
    if is_usage_error(exc):
        # A mistake on the command line: Click's own words, on one line.
        what = str(exc.format_message()).replace("\n", " ")  # type: ignore[attr-defined]
        return Report(int(exc.exit_code), "usage", f"{what} (see --help)")  # type: ignore[attr-defined]
    if isinstance(exc, KeyboardInterrupt):
        return Report(ExitCode.INTERRUPTED, "interrupted", "interrupted")
    cause = cause_of(exc)
    if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)):
        # A database the schema check passed and still lacks a table: migrated by hand?
        return Report(
            ExitCode.SCHEMA_MISMATCH,
            "schema_mismatch",
            f"the database lacks what this worker needs ({cause}): run `billing-worker migrate`",
        )
    if isinstance(exc, KafkaError):
        return Report(
            ExitCode.BROKER_UNREACHABLE,
            "broker_error",
            f"Kafka failed ({cause}): check the broker and BILLING_KAFKA_* settings",
        )
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        return Report(
            ExitCode.DATABASE_UNREACHABLE,
            "database_error",
            f"PostgreSQL connection failed ({cause}): check PostgreSQL and BILLING_DATABASE_URL",
        )
    return Report(ExitCode.FAILED, "unexpected_error", f"unexpected error ({cause}): {_DEBUG_HINT}")


def report(exc: BaseException, command: str, level: str, json: bool) -> int:
    """Tell the operator about `exc` on stderr; returns the exit code.

    The traceback is shown only at DEBUG: in JSON mode inside the one JSON line.
    """
    what = classify(exc)
    what = Report(what.exit_code, what.error_code, redact.scrub(what.message))
    debug = level == "DEBUG"
    if json:
        logs.get("worker.cli").error(
            "command_failed",
            command=command,
            error_code=what.error_code,
            exit_code=what.exit_code,
            message=what.message,
            exc_info=exc if debug else None,
        )
    else:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.write(f"{' '.join(['billing-worker', command]).strip()}: {what.message}\n")
        sys.stderr.flush()
    return what.exit_code
