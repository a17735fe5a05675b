"""Failure reports: masked DSNs, schema version verdicts, exit codes by cause."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from worker.adapters.migrate import schema_problem, version_number
from worker.adapters.preflight import AccessRefused
from worker.config import SettingsError
from worker.entrypoints.failures import classify
from worker.errors import DatabaseUnreachable, UnknownAccount
from worker.logs import _OncePerWindow, _redact, preferences_from_env
from worker.redact import mask_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://billing@127.0.0.1:15432/billing", "postgresql://billing@127.0.0.1:15432/billing"),
        ("postgresql://u:pa%40ss@db:5432/b", "postgresql://u:***@db:5432/b"),
        ("postgres://u:pw@[::1]:5432/d?sslmode=require", "postgres://u:***@[::1]:5432/d?sslmode=require"),
        ("postgresql://u@h/d?password=pw&sslmode=verify-full", "postgresql://u@h/d?password=***&sslmode=verify-full"),
        ("postgresql://:pw@h/d", "postgresql://:***@h/d"),
    ],
)  # fmt: skip
def test_mask_dsn_hides_the_password_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown


BUNDLED = {"0001_ledger", "0002_marks", "0003_parking"}
RUN_MIGRATE = "run `billing-worker migrate`"
NEWER = "newer than this worker (it needs 3; unknown: 0004_later)"


@pytest.mark.parametrize(
    ("applied", "verdict"),
    [
        (BUNDLED, None),
        (set(), f"database at migration 0, this worker needs 3: {RUN_MIGRATE}"),
        ({"0001_ledger"}, f"database at migration 1, this worker needs 3: {RUN_MIGRATE}"),
        (
            {"0001_ledger", "0003_parking"},
            f"database lacks migration 0002_marks, this worker needs it: {RUN_MIGRATE}",
        ),
        (
            BUNDLED | {"0004_later"},
            f"database at migration 4, {NEWER}: run the worker release that migrated it",
        ),
    ],
)
def test_schema_verdicts(applied: set[str], verdict: str | None) -> None:
    assert schema_problem(applied, BUNDLED) == verdict


def test_version_numbers_come_from_the_file_name() -> None:
    assert [version_number(v) for v in ("0003_outbox_parking", "0010_x", "odd")] == [3, 10, 0]


@pytest.mark.parametrize(
    ("exc", "exit_code", "error_code"),
    [
        (DatabaseUnreachable("x"), 4, "database_unreachable"),
        (AccessRefused("x"), 77, "access_refused"),
        (UnknownAccount("x"), 2, "unknown_account"),
        (SettingsError("invalid settings: BILLING_HTTP_PORT: bad"), 78, "bad_setting"),
        (asyncpg.UndefinedTableError('relation "x" does not exist'), 5, "schema_mismatch"),
        (KafkaConnectionError("down"), 3, "broker_error"),
        (ConnectionRefusedError(111, "refused"), 1, "unexpected_error"),
        (RuntimeError("bug"), 1, "unexpected_error"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)  # fmt: skip
def test_exit_codes_by_cause(exc: BaseException, exit_code: int, error_code: str) -> None:
    report = classify(exc)
    assert (report.exit_code, report.error_code) == (exit_code, error_code)
    assert "\n" not in report.message


def test_the_unexpected_says_how_to_see_more() -> None:
    assert "BILLING_LOG_LEVEL=DEBUG" in classify(RuntimeError("bug")).message


def test_a_url_keeps_its_user_and_loses_its_password_while_addresses_go() -> None:
    line = "cannot reach postgresql://billing:secret@db:5432/b for ops@example.jp"
    assert _redact(line) == "cannot reach postgresql://billing:***@db:5432/b for <email>"


def test_log_preferences_from_a_broken_environment_fall_back() -> None:
    assert preferences_from_env({}) == ("INFO", True)
    assert preferences_from_env({"BILLING_LOG_LEVEL": "loud", "BILLING_LOG_JSON": "off"}) == (
        "INFO",
        False,
    )
    assert preferences_from_env({"BILLING_LOG_LEVEL": "debug"}) == ("DEBUG", True)


def test_a_repeated_library_line_passes_once_per_window() -> None:
    once = _OncePerWindow(window_s=60)

    def record(at: float, message: str) -> logging.LogRecord:
        rec = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, message, None, None)
        rec.created = at
        return rec

    passed = [
        once.filter(record(t, m))
        for t, m in [(0, "down"), (1, "down"), (59, "down"), (2, "other"), (61, "down")]
    ]
    assert passed == [True, False, False, True, True]
