"""`billing-worker migrate` applies what is missing, in order, and is idempotent."""

from __future__ import annotations

import asyncpg
import pytest

from tests.integration.kit import run_cli
from worker.adapters.migrate import migration_files
from worker.config import Settings

pytestmark = pytest.mark.integration


async def test_migrate_twice_applies_nothing_the_second_time(settings: Settings) -> None:
    code, out, err = await run_cli(settings, "migrate")
    assert code == 0, err
    assert "up to date" in out
    conn = await asyncpg.connect(settings.database_url)
    try:
        recorded = [
            r["version"]
            for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        ]
    finally:
        await conn.close()
    assert recorded == [version for version, _ in migration_files()]
    assert recorded[0] == "0001_ledger"


async def test_the_ledger_refuses_updates_and_deletes(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (account_id, partition) VALUES ('ledger-probe', 0)"
            )
            await conn.execute(
                "INSERT INTO ledger_entries (entry_id, account_id, kind, amount_jpy,"
                " balance_after_jpy, occurred_at, ref, partition)"
                " VALUES ('grant:probe', 'ledger-probe', 'grant', 100, 100, now(), 'probe', 0)"
            )
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                async with conn.transaction():
                    await conn.execute("UPDATE ledger_entries SET amount_jpy = 1")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                async with conn.transaction():
                    await conn.execute("DELETE FROM ledger_entries")
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    """Leaves the probe rows behind in no test."""
