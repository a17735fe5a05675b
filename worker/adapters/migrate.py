"""Versioned SQL migrations, applied in order and recorded in `schema_migrations`."""

from __future__ import annotations

import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from worker import logs
from worker.errors import SchemaMismatch

log = logs.get("worker.migrate")

Conn = asyncpg.Connection | PoolConnectionProxy

_LOCK_KEY = 0x5B111_0001
_HOW_TO_MIGRATE = "run `billing-worker migrate`"


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the package, in order."""
    folder = resources.files("worker.adapters").joinpath("migrations")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text("utf-8")) for name in files]


def version_number(version: str) -> int:
    """0003 for `0003_outbox_parking`; 0 for anything without a number in front."""
    head = version.partition("_")[0]
    return int(head) if head.isdigit() else 0


def needed_version() -> int:
    """The schema this worker needs: the highest migration bundled with it."""
    return max((version_number(v) for v, _ in migration_files()), default=0)


async def applied_versions(conn: Conn) -> set[str]:
    """Versions recorded in `schema_migrations`; none when the table is not there yet."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


def schema_problem(applied: set[str], bundled: set[str]) -> str | None:
    """Why a worker bundling `bundled` must not use a database at `applied`; None if it may."""
    at = max((version_number(v) for v in applied), default=0)
    needs = max((version_number(v) for v in bundled), default=0)
    unknown = sorted(applied - bundled)
    if unknown:
        return (
            f"database at migration {at}, newer than this worker (it needs {needs};"
            f" unknown: {', '.join(unknown)}): run the worker release that migrated it"
        )
    missing = sorted(bundled - applied)
    if not missing:
        return None
    if at < needs:
        return f"database at migration {at}, this worker needs {needs}: {_HOW_TO_MIGRATE}"
    return f"database lacks migration {', '.join(missing)}, this worker needs it: {_HOW_TO_MIGRATE}"


async def check_schema(conn: Conn) -> None:
    """Raise SchemaMismatch unless the database holds exactly the bundled migrations."""
    problem = schema_problem(await applied_versions(conn), {v for v, _ in migration_files()})
    if problem is not None:
        raise SchemaMismatch(problem)


async def migrate(conn: Conn) -> list[str]:
    """Apply what is missing; returns the versions applied now. Safe to run concurrently.

    Refuses (SchemaMismatch) a database that a newer release already migrated further.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn)
        bundled = {v for v, _ in migration_files()}
        if done - bundled:
            raise SchemaMismatch(str(schema_problem(done, bundled)))
        applied = []
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def prepare_schema(pool: asyncpg.Pool, *, migrate_first: bool) -> None:
    """Before `run` starts: migrate if asked to (BILLING_MIGRATE_ON_START), then check."""
    async with pool.acquire() as conn:
        if migrate_first:
            applied = await migrate(conn)
            log.info("migrated_on_start", applied=applied)
        await check_schema(conn)


def database_url_for(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def create_database(admin_url: str, name: str, *, migrated: bool = True) -> str:
    """Create database `name` on the server of `admin_url` (migrated); returns its URL."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"not a plain database name: {name!r}")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url_for(admin_url, name)
    if migrated:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name`, ending its sessions."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
