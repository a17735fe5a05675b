"""Every account-owned row carries its account's input partition (ADR 0002, migration 0009)."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from aiokafka.partitioner import murmur2

from schemas.usage import UsageEvent
from tests.integration.kit import (
    ago,
    create_topics,
    database,
    ledger,
    lot_remaining,
    opened,
    produce,
    purchased,
    run_cli,
    running_worker,
    usage,
    wait_applied,
)
from worker.adapters.migrate import create_database, drop_database, migrate, migration_files
from worker.adapters.postgres import PgUnitOfWork
from worker.adapters.strays import stray_rows
from worker.config import Settings
from worker.domain.events import Effects, LedgerEntry
from worker.errors import AccountNotLocked
from worker.service.ports import Changes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OWNED = ("accounts", "lots", "ledger_entries", "processed_events", "usage_daily")
PARTITION_KEY = "0009_partition_key"


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
            await _migrate_before(conn, PARTITION_KEY)
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


async def test_a_unit_of_work_refuses_a_row_for_an_account_it_has_not_locked(
    settings: Settings, unique: str
) -> None:
    """What the dropped foreign key of ledger_entries guarded, the unit of work guards."""
    locked, other = f"locked-{unique}", f"other-{unique}"
    entry = LedgerEntry(
        f"grant:{unique}", other, "grant", 100, 100, datetime(2026, 11, 1, tzinfo=UTC), unique
    )
    async with database(settings) as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            uow = PgUnitOfWork(conn)
            await uow.lock_accounts([locked], {locked: 1})
            changes = Changes(effects=Effects(ledger=[entry]))
            with pytest.raises(AccountNotLocked):
                await uow.save(changes)
        finally:
            await transaction.rollback()
        written = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1", other
        )
    assert written == 0


async def test_the_stray_check_finds_a_row_of_another_partition(
    settings: Settings, unique: str
) -> None:
    account = f"stray-{unique}"
    async with database(settings) as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            before = await stray_rows(conn)
            await conn.execute(
                "INSERT INTO accounts (account_id, partition) VALUES ($1, 1)", account
            )
            await conn.execute(
                "INSERT INTO ledger_entries (entry_id, account_id, kind, amount_jpy,"
                " balance_after_jpy, occurred_at, ref, partition)"
                " VALUES ($1, $2, 'grant', 100, 100, now(), $1, 2)",
                f"grant:{unique}",
                account,
            )
            after = await stray_rows(conn)
        finally:
            await transaction.rollback()
    assert after.get("ledger_entries", 0) - before.get("ledger_entries", 0) == 1


@pytest.fixture
async def database_before_partitions(service_env: dict[str, str]) -> AsyncIterator[str]:
    """A database migrated up to the migration before the partition key, as deployed."""
    admin = service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")
    name = f"billing_upgrade_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await _migrate_before(conn, PARTITION_KEY)
        finally:
            await conn.close()
        yield url
    finally:
        await drop_database(admin, name)


async def test_a_database_of_the_previous_release_upgrades_and_billing_goes_on(
    settings: Settings, database_before_partitions: str, unique: str
) -> None:
    settings = settings.model_copy(update={"database_url": database_before_partitions})
    account, quiet = f"upg-{unique}", f"quiet-{unique}"
    part = kafka_partition(account, settings.input_partitions)
    charged = usage(f"u1-{unique}", account, ago(hours=2))
    async with database(settings) as conn:
        await _bill_as_the_previous_release(conn, account, quiet, part, charged, unique)

    code, _, err = await run_cli(settings, "migrate")
    assert code == 0, err

    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        # The charge applied before the upgrade arrives again, then a new one; the quiet
        # account (known, no event applied) opens.
        await produce(
            settings,
            settings.topic_usage,
            [charged, usage(f"u2-{unique}", account, ago(minutes=1))],
        )
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{quiet}", quiet, ago(minutes=1), test_credits=300)],
        )
        await wait_applied(conn, [f"u2-{unique}", f"open-{quiet}"])
        entries = await ledger(conn, account)
        balance = await conn.fetchval(
            "SELECT balance_jpy FROM accounts WHERE account_id = $1", account
        )
        lots = await lot_remaining(conn, account)
        partitions = {
            table: Counter(
                (r["account_id"], r["partition"])
                for r in await conn.fetch(
                    f"SELECT account_id, partition FROM {table} WHERE account_id = ANY($1::text[])",
                    [account, quiet],
                )
            )
            for table in (*OWNED, "postpay_usage", "invoices")
        }
        quiet_part = await conn.fetchval(
            "SELECT partition FROM accounts WHERE account_id = $1", quiet
        )
        strays = await stray_rows(conn)
        dead = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1", settings.topic_dlq
        )
    # By hand: 1,000 granted, 10 charged before the upgrade, the redelivery skipped, 10 more.
    assert [(e["kind"], e["amount_jpy"]) for e in entries] == [
        ("grant", 1000),
        ("charge", -10),
        ("charge", -10),
    ]
    assert (balance, lots) == (980, {f"lot:buy-{unique}": 980})
    assert dead == 0  # the redelivery was recognised as the same event, not a conflict
    assert quiet_part == kafka_partition(quiet, settings.input_partitions)
    # Rows from before the upgrade were filled in, rows after it written with the partition.
    mine, theirs = (account, part), (quiet, quiet_part)
    assert partitions == {
        "accounts": Counter({mine: 1, theirs: 1}),
        "lots": Counter({mine: 1, theirs: 1}),
        "ledger_entries": Counter({mine: 3, theirs: 1}),
        # The purchase and the charge from before the upgrade; usage since: its charge entry.
        "processed_events": Counter({mine: 2, theirs: 1}),
        "usage_daily": Counter({mine: 2}),  # a day before the upgrade, today
        "postpay_usage": Counter({mine: 1}),
        "invoices": Counter({mine: 1}),
    }
    assert strays == {}


async def _bill_as_the_previous_release(
    conn: asyncpg.Connection,
    account: str,
    quiet: str,
    part: int,
    charged: dict[str, object],
    unique: str,
) -> None:
    """The rows the release before the partition key wrote for: a purchase of 1,000 JPY and a
    charge of 10 (both applied from partition `part`), a postpay charge already invoiced, and
    an account whose only record was refused."""
    bought = datetime.now(UTC) - timedelta(days=1)
    # What that release stored as the charge's fingerprint: its validated payload, canonical.
    canonical = orjson.dumps(
        UsageEvent.model_validate(charged).model_dump(mode="json"), option=orjson.OPT_SORT_KEYS
    )
    await conn.execute(
        "INSERT INTO accounts (account_id, opened, balance_jpy, version)"
        " VALUES ($1, true, 990, 2), ($2, false, 0, 0)",
        account,
        quiet,
    )
    await conn.execute(
        "INSERT INTO lots (lot_id, account_id, source, amount_jpy, remaining_jpy, granted_at,"
        " expires_at) VALUES ($1, $2, 'purchase', 1000, 990, $3::timestamptz,"
        " $3::timestamptz + interval '90 days')",
        f"lot:buy-{unique}",
        account,
        bought,
    )
    await conn.executemany(
        "INSERT INTO ledger_entries (entry_id, account_id, kind, amount_jpy, balance_after_jpy,"
        " occurred_at, ref, allocations, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
        " $9)",
        [
            (
                f"grant:buy-{unique}",
                account,
                "grant",
                1000,
                1000,
                bought,
                f"buy-{unique}",
                "[]",
                bought,
            ),
            (
                f"charge:u1-{unique}",
                account,
                "charge",
                -10,
                990,
                datetime.fromisoformat(str(charged["occurred_at"])),
                f"u1-{unique}",
                f'[{{"lot_id": "lot:buy-{unique}", "amount_jpy": 10}}]',
                bought + timedelta(hours=1),
            ),
        ],
    )
    await conn.executemany(
        "INSERT INTO processed_events (source, event_id, fingerprint, account_id, topic,"
        ' partition, "offset") VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [
            ("account", f"buy-{unique}", b"\x00", account, "account-events", part, 0),
            (
                "usage",
                f"u1-{unique}",
                hashlib.sha256(canonical).digest(),
                account,
                "usage",
                part,
                0,
            ),
        ],
    )
    await conn.execute(
        "INSERT INTO usage_daily (account_id, day, amount_jpy) VALUES ($1, $2, 10)",
        account,
        bought.date(),
    )
    await conn.execute(
        "INSERT INTO postpay_usage (event_id, account_id, period, occurred_at, country,"
        " unit_price_jpy, segments, amount_jpy, from_lots_jpy, invoice_id) VALUES ($1, $2,"
        " '2026-10', $3, 'JP', 10, 1, 10, 0, $4)",
        f"pp-{unique}",
        account,
        datetime(2026, 10, 5, tzinfo=UTC),
        f"INV-2026-10-{account}",
    )
    await conn.execute(
        "INSERT INTO invoices (invoice_id, account_id, period, total_jpy, issued_at, due_date)"
        " VALUES ($1, $2, '2026-10', 10, $3, '2026-11-30')",
        f"INV-2026-10-{account}",
        account,
        datetime(2026, 11, 1, tzinfo=UTC),
    )
