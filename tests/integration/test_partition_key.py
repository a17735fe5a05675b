"""Every account-owned row carries its account's input partition (ADR 0002, migration 0008)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka.partitioner import murmur2

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    produce,
    purchased,
    running_worker,
    usage,
    wait_applied,
)
from worker.adapters.migrate import create_database, drop_database, migrate, migration_files
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OWNED = ("accounts", "lots", "ledger_entries", "processed_events", "usage_daily")


def kafka_partition(key: str, partitions: int) -> int:
    """Where the Java client's (and aiokafka's) default partitioner puts a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


async def test_rows_written_for_an_account_carry_the_partition_of_its_records(
    settings: Settings, unique: str
) -> None:
    account = f"part-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(minutes=5), test_credits=100),
                purchased(f"buy-{unique}", account, ago(minutes=4), 1000),
            ],
        )
        await produce(
            settings, settings.topic_usage, [usage(f"u-{unique}", account, ago(minutes=3))]
        )
        await wait_applied(conn, [f"open-{unique}", f"buy-{unique}", f"u-{unique}"])
        found = {
            table: {
                r["partition"]
                for r in await conn.fetch(
                    f"SELECT partition FROM {table} WHERE account_id = $1", account
                )
            }
            for table in OWNED
        }
    expected = kafka_partition(account, settings.input_partitions)
    assert found == {table: {expected} for table in OWNED}


async def test_the_migration_fills_the_partition_in_from_the_processed_events(
    service_env: dict[str, str],
) -> None:
    admin = service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")
    name = f"billing_test_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await _migrate_before(conn, "0008_partition_key")
            at = datetime(2026, 11, 1, tzinfo=UTC)
            await conn.execute(
                "INSERT INTO accounts (account_id) VALUES ('known'), ('refused-only')"
            )
            await conn.execute(
                "INSERT INTO processed_events (source, event_id, fingerprint, account_id, topic,"
                " partition, \"offset\") VALUES ('account', 'e1', '\\x00', 'known', 't', 4, 7)"
            )
            await conn.execute(
                "INSERT INTO lots (lot_id, account_id, source, amount_jpy, remaining_jpy,"
                " granted_at, expires_at) VALUES ('lot:e1', 'known', 'purchase', 1000, 1000,"
                " $1::timestamptz, $1::timestamptz + interval '90 days')",
                at,
            )
            await conn.execute(
                "INSERT INTO ledger_entries (entry_id, account_id, kind, amount_jpy,"
                " balance_after_jpy, occurred_at, ref)"
                " VALUES ('grant:e1', 'known', 'grant', 1000, 1000, $1, 'e1')",
                at,
            )
            await migrate(conn)
            accounts = dict(await conn.fetch("SELECT account_id, partition FROM accounts"))
            lots = await conn.fetchval("SELECT partition FROM lots WHERE lot_id = 'lot:e1'")
            entry = await conn.fetchval(
                "SELECT partition FROM ledger_entries WHERE entry_id = 'grant:e1'"
            )
        finally:
            await conn.close()
    finally:
        await drop_database(admin, name)
    # By hand: the account's processed event came from partition 4; an account with none
    # is marked unknown (-1) until its next record.
    assert accounts == {"known": 4, "refused-only": -1}
    assert (lots, entry) == (4, 4)


async def _migrate_before(conn: asyncpg.Connection, version: str) -> None:
    """Apply the migrations older than `version`, as a database deployed before it had."""
    await conn.execute(
        "CREATE TABLE schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in migration_files():
        if name >= version:
            break
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
