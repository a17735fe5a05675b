"""What an operator sees when something is wrong: the real `billing-worker` command, one clear
line (one JSON object in JSON mode), no traceback, and the exit code the README documents."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.integration.kit import CLI, create_topics, settings_env
from worker.adapters.migrate import create_database, drop_database
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
# The README's table, written out by hand.
OK, FAILED, BAD_ARGUMENT, BROKER, DATABASE, SCHEMA, BAD_SETTING = 0, 1, 2, 3, 4, 5, 78
ACCESS_REFUSED = 77


def needed_schema() -> int:
    """The highest migration number among the files shipped in the package folder."""
    folder = ROOT / "worker" / "adapters" / "migrations"
    return max(int(path.name.split("_")[0]) for path in folder.glob("*.sql"))


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def cli(settings: Settings, *args: str, **env: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of `billing-worker ARGS`."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        env=settings_env(settings, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert not {"╭", "│", "╰"} & set(err), err  # no boxes drawn by rich


def one_failure(err: str, exit_code: int, error_code: str) -> dict[str, object]:
    """stderr holds exactly one line, a JSON object reporting the failure."""
    no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line: dict[str, object] = orjson.loads(lines[0])
    assert line["event"] == "command_failed"
    assert (line["exit_code"], line["error_code"], line["level"]) == (
        exit_code,
        error_code,
        "error",
    )
    return line


def failure_among(err: str, exit_code: int, error_code: str) -> dict[str, object]:
    """Every stderr line is a JSON object (a log pipeline can read them); the last reports."""
    no_traceback(err)
    lines = [orjson.loads(line) for line in err.strip().splitlines()]
    assert lines[-1]["event"] == "command_failed", err
    assert (lines[-1]["exit_code"], lines[-1]["error_code"]) == (exit_code, error_code)
    result: dict[str, object] = lines[-1]
    return result


@pytest.fixture
async def empty_database(service_env: dict[str, str]) -> AsyncIterator[str]:
    """The URL of a database no migration was ever applied to."""
    admin_url = service_env["BILLING_DATABASE_URL"]
    name = f"billing_empty_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin_url, name, migrated=False)
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


@pytest.fixture
async def future_database(service_env: dict[str, str]) -> AsyncIterator[str]:
    """The URL of a database migrated by a newer release than this one."""
    admin_url = service_env["BILLING_DATABASE_URL"]
    name = f"billing_future_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ('9999_from_later')")
    finally:
        await conn.close()
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


def down_database(port: int) -> str:
    return f"postgresql://billing:s3cret@127.0.0.1:{port}/billing"


@pytest.mark.parametrize(
    "args",
    [
        ("account", "acc-1"),
        ("account", "acc-1", "--json"),
        ("migrate",),
        ("close-month", "2026-01"),
    ],
)
async def test_database_unreachable_is_one_line_naming_the_masked_dsn_within_a_bound(
    settings: Settings, args: tuple[str, ...]
) -> None:
    port = closed_port()
    url = down_database(port)
    s = settings.model_copy(update={"database_url": url})
    code, out, err, took_s = await cli(s, *args, connect_timeout_s="2")
    assert code == DATABASE, err
    line = one_failure(err, DATABASE, "database_unreachable")
    message = str(line["message"])
    assert f"postgresql://billing:***@127.0.0.1:{port}/billing" in message
    assert "BILLING_DATABASE_URL" in message
    assert "s3cret" not in err + out
    assert took_s < 2 + 20  # the bound plus the interpreter's start on a busy machine


@pytest.mark.parametrize("args", [("run",), ("account", "acc-1"), ("migrate",)])
async def test_a_database_that_does_not_exist_is_reported_at_once(
    settings: Settings, args: tuple[str, ...]
) -> None:
    url = settings.database_url.rsplit("/", 1)[0] + "/no_such_billing_db"
    s = settings.model_copy(update={"database_url": url})
    code, _, err, _ = await cli(s, *args, connect_timeout_s="600")
    assert code == DATABASE, err
    line = failure_among(err, DATABASE, "database_unreachable")
    assert "no_such_billing_db" in str(line["message"])
    assert "InvalidCatalogNameError" in str(line["message"])


@pytest.mark.parametrize("args", [("lag",), ("lag", "--json"), ("dlq", "replay")])
async def test_broker_unreachable_is_one_line_naming_the_bootstrap_servers_within_a_bound(
    settings: Settings, args: tuple[str, ...]
) -> None:
    port = closed_port()
    s = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{port}"})
    code, _, err, took_s = await cli(s, *args, connect_timeout_s="2")
    assert code == BROKER, err
    line = one_failure(err, BROKER, "broker_unreachable")
    assert f"Kafka at 127.0.0.1:{port}" in str(line["message"])
    assert "BILLING_KAFKA_BOOTSTRAP_SERVERS" in str(line["message"])
    assert took_s < 2 + 20


@pytest.mark.parametrize("args", [("run",), ("account", "acc-1"), ("close-month", "2026-01")])
async def test_a_database_never_migrated_is_refused_with_what_to_run(
    settings: Settings, empty_database: str, args: tuple[str, ...]
) -> None:
    s = settings.model_copy(update={"database_url": empty_database})
    code, _, err, _ = await cli(s, *args)
    assert code == SCHEMA, err
    line = failure_among(err, SCHEMA, "schema_mismatch")
    assert line["message"] == (
        f"database at migration 0, this worker needs {needed_schema()}:"
        " run `billing-worker migrate`"
    )


@pytest.mark.parametrize("args", [("run",), ("account", "acc-1"), ("migrate",)])
async def test_a_database_migrated_by_a_newer_release_is_refused(
    settings: Settings, future_database: str, args: tuple[str, ...]
) -> None:
    s = settings.model_copy(update={"database_url": future_database})
    code, _, err, _ = await cli(s, *args)
    assert code == SCHEMA, err
    line = failure_among(err, SCHEMA, "schema_mismatch")
    assert str(line["message"]).startswith("database at migration 9999, newer than this worker")
    assert "9999_from_later" in str(line["message"])


async def test_migrate_then_account_goes_from_exit_5_to_exit_2(
    settings: Settings, empty_database: str
) -> None:
    s = settings.model_copy(update={"database_url": empty_database})
    assert (await cli(s, "account", "acc-1"))[0] == SCHEMA
    code, out, err, _ = await cli(s, "migrate")
    assert code == OK, err
    assert out.startswith("applied: 0001_ledger")
    code, _, err, _ = await cli(s, "account", "acc-1")
    assert code == BAD_ARGUMENT
    line = one_failure(err, BAD_ARGUMENT, "unknown_account")
    assert "acc-1" in str(line["message"])


async def test_two_migrations_at_once_both_succeed_and_apply_each_version_once(
    settings: Settings, empty_database: str
) -> None:
    s = settings.model_copy(update={"database_url": empty_database})
    results = await asyncio.gather(cli(s, "migrate"), cli(s, "migrate"))
    assert [code for code, *_ in results] == [OK, OK], [err for _, _, err, _ in results]
    conn = await asyncpg.connect(empty_database)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    shipped = sorted(p.stem for p in (ROOT / "worker" / "adapters" / "migrations").glob("*.sql"))
    assert sorted(versions) == shipped


async def test_bad_setting_exits_78_with_one_json_line_naming_the_variable(
    settings: Settings,
) -> None:
    for args in [("run",), ("account", "acc-1"), ("lag",)]:
        code, _, err, _ = await cli(settings, *args, http_port="eighty")
        assert code == BAD_SETTING, err
        line = one_failure(err, BAD_SETTING, "bad_setting")
        assert "BILLING_HTTP_PORT" in str(line["message"])


async def test_a_usage_mistake_is_one_json_line_with_exit_2(settings: Settings) -> None:
    code, _, err, _ = await cli(settings, "account")
    assert code == BAD_ARGUMENT
    one_failure(err, BAD_ARGUMENT, "usage")
    code, _, err, _ = await cli(settings, "close-month", "2026-13")
    assert code == BAD_ARGUMENT
    one_failure(err, BAD_ARGUMENT, "bad_argument")


async def test_console_mode_prints_one_plain_line(settings: Settings) -> None:
    port = closed_port()
    s = settings.model_copy(update={"database_url": down_database(port), "log_json": False})
    code, _, err, _ = await cli(s, "account", "acc-1", connect_timeout_s="1")
    assert code == DATABASE
    no_traceback(err)
    assert err.count("\n") == 1, err
    assert err.startswith("billing-worker account: cannot reach PostgreSQL at postgresql://")
    assert "s3cret" not in err


async def test_the_traceback_is_shown_at_debug_only(settings: Settings) -> None:
    port = closed_port()
    s = settings.model_copy(update={"database_url": down_database(port), "log_level": "DEBUG"})
    code, _, err, _ = await cli(s, "account", "acc-1", connect_timeout_s="1")
    assert code == DATABASE
    failures = [
        line for line in map(orjson.loads, err.splitlines()) if line["event"] == "command_failed"
    ]
    assert len(failures) == 1
    assert "Traceback" in failures[0]["exception"]
    assert "ConnectionRefusedError" in failures[0]["exception"]


async def test_version_names_the_package_and_the_schema_it_needs(settings: Settings) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    code, out, err, _ = await cli(settings, "--version")
    assert code == OK, err
    assert out == f"billing-worker {project['version']} (database schema {needed_schema()})\n"


async def _lines_until(stream: asyncio.StreamReader, event: str) -> list[dict[str, object]]:
    lines = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), timeout=60)
        assert raw, "stderr closed before " + event
        line = orjson.loads(raw)
        lines.append(line)
        if line["event"] == event:
            return lines


async def _lines_for(stream: asyncio.StreamReader, window_s: float) -> list[dict[str, object]]:
    """Every line written within the next `window_s` seconds (an observation, not a wait)."""
    lines = []
    deadline = time.monotonic() + window_s
    while (left_s := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(stream.readline(), timeout=left_s)
        except TimeoutError:
            break
        if not raw:
            break
        lines.append(orjson.loads(raw))
    return lines


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    rest = await asyncio.wait_for(proc.stderr.read(), timeout=60)
    code = await asyncio.wait_for(proc.wait(), timeout=30)
    return code, rest.decode()


@pytest.mark.parametrize("down", ["database", "broker"])
async def test_run_keeps_retrying_and_logs_one_line_per_outage(
    settings: Settings, down: str
) -> None:
    port = closed_port()
    if down == "database":
        s = settings.model_copy(update={"database_url": down_database(port)})
        operation, target = "database_connect", f"postgresql://billing:***@127.0.0.1:{port}/billing"
    else:
        s = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{port}"})
        operation, target = "kafka_connect", f"127.0.0.1:{port}"
    s = s.model_copy(update={"retry_max_backoff_s": 0.1})
    proc = await asyncio.create_subprocess_exec(
        str(CLI), "run", env=settings_env(s), stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        seen = await _lines_until(proc.stderr, "retrying")
        # Retrying every 0.1 s, the worker makes tens of attempts in this window; none of them
        # may add a line about the same outage.
        seen += await _lines_for(proc.stderr, 3.0)
    finally:
        code, rest = await _stop(proc)
    no_traceback(rest)
    seen += [orjson.loads(line) for line in rest.splitlines()]
    retrying = [line for line in seen if line["event"] == "retrying"]
    assert len(retrying) == 1, seen
    assert (retrying[0]["operation"], retrying[0]["target"]) == (operation, target)
    assert code == OK, seen
    assert "s3cret" not in orjson.dumps(seen).decode()


async def test_migrate_on_start_migrates_an_empty_database_then_runs(
    settings: Settings, empty_database: str
) -> None:
    s = settings.model_copy(update={"database_url": empty_database})
    await create_topics(s)
    env = settings_env(s, migrate_on_start="true")
    proc = await asyncio.create_subprocess_exec(
        str(CLI), "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        seen = await _lines_until(proc.stderr, "worker_started")
    finally:
        code, rest = await _stop(proc)
    assert code == OK, rest
    migrated = [line for line in seen if line["event"] == "migrated_on_start"]
    shipped = sorted(p.stem for p in (ROOT / "worker" / "adapters" / "migrations").glob("*.sql"))
    assert [line["applied"] for line in migrated] == [shipped]


def test_the_readme_documents_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes") :]
    for code in (OK, FAILED, BAD_ARGUMENT, BROKER, DATABASE, SCHEMA, ACCESS_REFUSED, BAD_SETTING):
        assert f"\n| {code} |" in table
