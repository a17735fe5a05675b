"""A usage event's charge entry is its de-duplication record (migration 0011), before and after
the upgrade, through the real broker and database."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from schemas.usage import UsageEvent
from tests.integration.kit import (
    ago,
    create_topics,
    database,
    ledger,
    messages_for,
    opened,
    produce,
    produce_positions,
    purchased,
    reminder_set,
    run_cli,
    running_worker,
    usage,
    wait_applied,
    wait_outbox_sent,
)
from tests.integration.test_partition_key import _migrate_before, kafka_partition
from tests.waiting import wait_until
from worker.adapters.migrate import create_database, drop_database
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BEFORE = "0011_usage_dedup_in_ledger"


def fingerprint(event: dict[str, Any]) -> bytes:
    """What every release stored: SHA-256 of the validated payload dumped with sorted keys."""
    canonical = orjson.dumps(
        UsageEvent.model_validate(event).model_dump(mode="json"), option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).digest()


async def test_a_redelivered_usage_event_is_found_by_its_charge_entry(
    settings: Settings, unique: str
) -> None:
    account = f"rec-{unique}"
    event = usage(f"u-{unique}", account, ago(hours=1), segments=4)
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{unique}", account, ago(hours=2), test_credits=100)],
        )
        ((_, first),) = await produce_positions(settings, settings.topic_usage, [event])
        await wait_applied(conn, [f"u-{unique}"])
        await produce(settings, settings.topic_usage, [event])  # a later batch
        marker = usage(f"m-{unique}", account, ago(minutes=1))
        await produce(settings, settings.topic_usage, [marker])
        await wait_applied(conn, [f"m-{unique}"])
        charges = await conn.fetch(
            "SELECT entry_id, amount_jpy, fingerprint, input_offset FROM ledger_entries"
            " WHERE account_id = $1 AND kind = 'charge' ORDER BY entry_id",
            account,
        )
        usage_rows = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE source = 'usage' AND account_id = $1",
            account,
        )
        account_rows = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE source = 'account' AND account_id = $1",
            account,
        )
        balance = await conn.fetchval(
            "SELECT balance_jpy FROM accounts WHERE account_id = $1", account
        )
    # By hand: 100 of test credits, 4 segments to Japan at 10, then 1 more; the redelivery skipped.
    assert [(c["entry_id"], c["amount_jpy"]) for c in charges] == [
        (f"charge:m-{unique}", -10),
        (f"charge:u-{unique}", -40),
    ]
    assert balance == 50
    by_id = {c["entry_id"]: c for c in charges}
    assert bytes(by_id[f"charge:u-{unique}"]["fingerprint"]) == fingerprint(event)
    assert by_id[f"charge:u-{unique}"]["input_offset"] == first
    # One row per applied usage event fewer: no processed_events row for usage any more.
    assert (usage_rows, account_rows) == (0, 1)


@pytest.fixture
async def database_before_0011(service_env: dict[str, str]) -> AsyncIterator[str]:
    """A database migrated up to the migration before this one, as the previous release left."""
    admin = service_env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing")
    name = f"billing_0011_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, name, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await _migrate_before(conn, BEFORE)
        finally:
            await conn.close()
        yield url
    finally:
        await drop_database(admin, name)


async def _bill_as_the_previous_release(
    conn: asyncpg.Connection, account: str, part: int, charged: list[dict[str, Any]], unique: str
) -> None:
    """What the release before 0011 wrote for a purchase of 1,000 JPY and two charges of 10:
    ledger entries without fingerprints, and a processed_events row for every event."""
    bought = datetime.now(UTC) - timedelta(days=1)
    await conn.execute(
        "INSERT INTO accounts (account_id, partition, opened, balance_jpy, version)"
        " VALUES ($1, $2, true, 980, 3)",
        account,
        part,
    )
    await conn.execute(
        "INSERT INTO lots (lot_id, account_id, source, amount_jpy, remaining_jpy, granted_at,"
        " expires_at, partition) VALUES ($1, $2, 'purchase', 1000, 980, $3::timestamptz,"
        " $3::timestamptz + interval '90 days', $4)",
        f"lot:buy-{unique}",
        account,
        bought,
        part,
    )
    entries = [(f"grant:buy-{unique}", "grant", 1000, 1000, bought, f"buy-{unique}", "[]")]
    for i, event in enumerate(charged):
        entries.append(
            (
                f"charge:{event['event_id']}",
                "charge",
                -10,
                990 - 10 * i,
                datetime.fromisoformat(str(event["occurred_at"])),
                event["event_id"],
                f'[{{"lot_id": "lot:buy-{unique}", "amount_jpy": 10}}]',
            )
        )
    await conn.executemany(
        "INSERT INTO ledger_entries (entry_id, account_id, kind, amount_jpy, balance_after_jpy,"
        " occurred_at, ref, allocations, partition) VALUES ($1, $8, $2, $3, $4, $5, $6, $7, $9)",
        [(*e, account, part) for e in entries],
    )
    await conn.executemany(
        "INSERT INTO processed_events (source, event_id, fingerprint, account_id, topic,"
        ' partition, "offset") VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [("account", f"buy-{unique}", b"\x00", account, "account-events", part, 0)]
        + [
            ("usage", e["event_id"], fingerprint(e), account, "usage", part, i)
            for i, e in enumerate(charged)
        ],
    )


async def test_usage_applied_before_the_upgrade_is_still_a_duplicate_or_a_conflict(
    settings: Settings, database_before_0011: str, unique: str
) -> None:
    settings = settings.model_copy(update={"database_url": database_before_0011})
    account = f"old-{unique}"
    part = kafka_partition(account, settings.input_partitions)
    u1 = usage(f"u1-{unique}", account, ago(hours=3))
    u2 = usage(f"u2-{unique}", account, ago(hours=2))
    async with database(settings) as conn:
        await _bill_as_the_previous_release(conn, account, part, [u1, u2], unique)

    code, _, err = await run_cli(settings, "migrate")
    assert code == 0, err

    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        # u1 again as it was, u2 again with another payload, then a new one.
        positions = await produce_positions(
            settings,
            settings.topic_usage,
            [u1, {**u2, "segments": 3}, usage(f"u3-{unique}", account, ago(minutes=1))],
        )
        await wait_applied(conn, [f"u3-{unique}"])
        sent = await wait_outbox_sent(conn, account, topic=settings.topic_dlq)
        entries = await ledger(conn, account)
        balance = await conn.fetchval(
            "SELECT balance_jpy FROM accounts WHERE account_id = $1", account
        )
        usage_rows = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE source = 'usage' AND account_id = $1",
            account,
        )
    # By hand: 1,000 granted, 10 and 10 charged before the upgrade; u1 skipped, u2's other
    # payload dead-lettered as a conflict, u3 charged 10.
    assert sorted((e["entry_id"], e["amount_jpy"]) for e in entries) == [
        (f"charge:u1-{unique}", -10),
        (f"charge:u2-{unique}", -10),
        (f"charge:u3-{unique}", -10),
        (f"grant:buy-{unique}", 1000),
    ]
    assert balance == 970
    assert usage_rows == 2  # the two from before the upgrade, and none since
    (dead,) = await messages_for(settings, settings.topic_dlq, account, at_least=sent)
    assert dead["error_code"] == "conflicting_duplicate"
    assert (dead["source_partition"], dead["source_offset"]) == positions[1]


async def test_the_migration_refuses_applied_usage_without_a_charge_entry(
    settings: Settings, database_before_0011: str, unique: str
) -> None:
    settings = settings.model_copy(update={"database_url": database_before_0011})
    async with database(settings) as conn:
        await conn.execute(
            "INSERT INTO processed_events (source, event_id, fingerprint, account_id, topic,"
            " partition, \"offset\") VALUES ('usage', $1, '\\x00', 'a', 'usage', 0, 0)",
            f"orphan-{unique}",
        )
    code, _, err = await run_cli(settings, "migrate")
    async with database(settings) as conn:
        applied = await conn.fetchval(
            "SELECT count(*) FROM schema_migrations WHERE version = $1", BEFORE
        )
    assert code != 0
    assert "1 applied usage events have no charge entry" in err
    assert applied == 0


async def _state_of(conn: asyncpg.Connection, accounts: list[str]) -> dict[str, Any]:
    """Everything billed for `accounts`: ledger, lots, account rows, outbox messages."""
    return {
        "ledger": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT entry_id, amount_jpy, balance_after_jpy, allocations::text, fingerprint,"
                " input_offset FROM ledger_entries WHERE account_id = ANY($1::text[])"
                " ORDER BY entry_id",
                accounts,
            )
        ],
        "lots": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT lot_id, remaining_jpy, forfeited_jpy FROM lots"
                " WHERE account_id = ANY($1::text[]) ORDER BY lot_id",
                accounts,
            )
        ],
        "accounts": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT account_id, balance_jpy, overdraft_jpy, version FROM accounts"
                " WHERE account_id = ANY($1::text[]) ORDER BY account_id",
                accounts,
            )
        ],
        "outbox": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT message_id, payload FROM outbox"
                " WHERE key = ANY($1::bytea[]) ORDER BY message_id",
                [a.encode() for a in accounts],
            )
        ],
        "processed": await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE account_id = ANY($1::text[])", accounts
        ),
    }


async def test_replaying_every_batch_from_the_start_changes_nothing(
    settings: Settings, unique: str
) -> None:
    accounts = [f"rp-{unique}-{i}" for i in range(3)]
    start = ago(hours=3)
    account_events = []
    for i, account in enumerate(accounts):
        account_events += [
            opened(f"open-{unique}-{i}", account, start, test_credits=100),
            purchased(f"buy-{unique}-{i}", account, start + timedelta(minutes=1), 1000),
            reminder_set(f"rem-{unique}-{i}", account, start + timedelta(minutes=2), 1050),
        ]
    usage_events = [
        usage(f"u-{unique}-{n}", accounts[n % 3], start + timedelta(minutes=5 + n), segments=2)
        for n in range(30)
    ]
    ids = [e["event_id"] for e in account_events + usage_events]
    await create_topics(settings)
    await produce(settings, settings.topic_account_events, account_events)
    await produce(settings, settings.topic_usage, usage_events)
    async with running_worker(settings), database(settings) as conn:
        await wait_applied(conn, ids)
        for account in accounts:
            await wait_outbox_sent(conn, account)
        before = await _state_of(conn, accounts)

    # A new consumer group reads both inputs from their start: every batch again.
    again = settings.model_copy(update={"consumer_group": f"replay-{unique}"})
    async with running_worker(again) as worker, database(again) as conn:

        def replayed() -> bool:
            seen = sum(
                worker.metrics.registry.get_sample_value(
                    "billing_events_total", {"topic": topic, "outcome": "duplicate"}
                )
                or 0
                for topic in (again.topic_usage, again.topic_account_events)
            )
            return seen == len(ids)

        await wait_until(replayed, 60, "every event to be read again")
        after = await _state_of(conn, accounts)
        applied = sum(
            worker.metrics.registry.get_sample_value(
                "billing_events_total", {"topic": topic, "outcome": "applied"}
            )
            or 0
            for topic in (again.topic_usage, again.topic_account_events)
        )
    # By hand: 3 × (100 + 1,000) granted, 10 charges of 20 each per account.
    assert [a[1] for a in before["accounts"]] == [900, 900, 900]
    assert len(before["ledger"]) == 3 * 2 + 30
    assert before["processed"] == 9  # account events only
    assert applied == 0
    assert after == before
