"""Credit lots through the real broker and database: debit order, splits, expiry, overdraft."""

from __future__ import annotations

import pytest

from tests.integration.kit import (
    account_row,
    ago,
    create_topics,
    database,
    ledger,
    lot_remaining,
    opened,
    produce,
    purchased,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_three_lots_are_debited_soonest_expiry_first(settings: Settings, unique: str) -> None:
    account = f"acc-{unique}"
    # Granted 80, 60 and 10 days ago: they expire in 10, 30 and 80 days. Sent newest first
    # so that the order of arrival cannot be what decides.
    grants = [
        purchased(f"buy10-{unique}", account, ago(days=10), 1000),
        purchased(f"buy60-{unique}", account, ago(days=60), 1000),
        opened(f"open-{unique}", account, ago(days=80), test_credits=300),
    ]
    charges = [
        usage(f"u1-{unique}", account, ago(hours=3), segments=20),  # 200: oldest lot only
        usage(f"u2-{unique}", account, ago(hours=2), segments=25),  # 250: 100 + 150
        usage(f"u3-{unique}", account, ago(hours=1), segments=90),  # 900: 850 + 50
    ]
    lot_open, lot_60, lot_10 = f"lot:open-{unique}", f"lot:buy60-{unique}", f"lot:buy10-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(settings, settings.topic_account_events, grants)
        await wait_applied(conn, [g["event_id"] for g in grants])
        assert await lot_remaining(conn, account) == {lot_open: 300, lot_60: 1000, lot_10: 1000}

        await produce(settings, settings.topic_usage, charges[:1])
        await wait_applied(conn, [f"u1-{unique}"])
        assert await lot_remaining(conn, account) == {lot_open: 100, lot_60: 1000, lot_10: 1000}

        await produce(settings, settings.topic_usage, charges[1:2])
        await wait_applied(conn, [f"u2-{unique}"])
        assert await lot_remaining(conn, account) == {lot_open: 0, lot_60: 850, lot_10: 1000}

        await produce(settings, settings.topic_usage, charges[2:])
        await wait_applied(conn, [f"u3-{unique}"])
        assert await lot_remaining(conn, account) == {lot_open: 0, lot_60: 0, lot_10: 950}

        entries = {e["ref"]: e for e in await ledger(conn, account) if e["kind"] == "charge"}
        row = await account_row(conn, account)
    assert entries[f"u1-{unique}"]["allocations"] == [{"lot_id": lot_open, "amount_jpy": 200}]
    # One charge spanning two lots lists both, soonest expiry first.
    assert entries[f"u2-{unique}"]["allocations"] == [
        {"lot_id": lot_open, "amount_jpy": 100},
        {"lot_id": lot_60, "amount_jpy": 150},
    ]
    assert entries[f"u3-{unique}"]["allocations"] == [
        {"lot_id": lot_60, "amount_jpy": 850},
        {"lot_id": lot_10, "amount_jpy": 50},
    ]
    assert [e["amount_jpy"] for e in entries.values()] == [-200, -250, -900]
    assert (row["balance_jpy"], row["overdraft_jpy"]) == (950, 0)


async def test_one_charge_in_one_batch_spans_two_lots(settings: Settings, unique: str) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(days=30), test_credits=100),
                purchased(f"buy-{unique}", account, ago(days=20), 1000),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"buy-{unique}"])
        await produce(
            settings,
            settings.topic_usage,
            [usage(f"u-{unique}", account, ago(minutes=5), segments=13)],
        )
        await wait_applied(conn, [f"u-{unique}"])
        (charge,) = [e for e in await ledger(conn, account) if e["kind"] == "charge"]
        remaining = await lot_remaining(conn, account)
    assert charge["amount_jpy"] == -130
    assert charge["allocations"] == [
        {"lot_id": f"lot:open-{unique}", "amount_jpy": 100},
        {"lot_id": f"lot:buy-{unique}", "amount_jpy": 30},
    ]
    assert remaining == {f"lot:open-{unique}": 0, f"lot:buy-{unique}": 970}


async def test_a_lot_expired_at_event_time_is_not_used(settings: Settings, unique: str) -> None:
    account = f"acc-{unique}"
    lot = f"lot:open-{unique}"
    # Expired 30 minutes ago: past its expiry but within the lateness allowance, so the sweep
    # leaves it alone and only the event-time rule can keep the charge off it.
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(days=90, minutes=30), test_credits=500),
            ],
        )
        await wait_applied(conn, [f"open-{unique}"])
        await produce(
            settings,
            settings.topic_usage,
            [
                # Before the expiry: the lot pays. After it: overdraft.
                usage(f"before-{unique}", account, ago(days=1), segments=4),
                usage(f"after-{unique}", account, ago(minutes=1), segments=7),
            ],
        )
        await wait_applied(conn, [f"before-{unique}", f"after-{unique}"])
        remaining = await lot_remaining(conn, account)
        entries = {e["ref"]: e for e in await ledger(conn, account) if e["kind"] == "charge"}
        row = await account_row(conn, account)
    assert remaining == {lot: 460}
    assert entries[f"before-{unique}"]["allocations"] == [{"lot_id": lot, "amount_jpy": 40}]
    assert entries[f"after-{unique}"]["allocations"] == []
    assert row["overdraft_jpy"] == 70


async def test_far_expired_lot_is_not_used_and_usage_becomes_overdraft(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(days=120), test_credits=500),
            ],
        )
        await wait_applied(conn, [f"open-{unique}"])
        await produce(
            settings,
            settings.topic_usage,
            [
                usage(f"u-{unique}", account, ago(days=20), segments=3),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"u-{unique}"])

        async def forfeited() -> bool:
            return bool(
                await conn.fetchval("SELECT forfeited FROM lots WHERE account_id = $1", account)
            )

        await wait_until(forfeited, 30, "the expiry sweep to forfeit the lot")
        entries = await ledger(conn, account)
        row = await account_row(conn, account)
        lot = await conn.fetchrow("SELECT * FROM lots WHERE account_id = $1", account)
    (charge,) = [e for e in entries if e["kind"] == "charge"]
    (forfeit,) = [e for e in entries if e["kind"] == "forfeit"]
    assert charge["allocations"] == []
    assert row["overdraft_jpy"] == 30
    # never debited: the sweep forfeits all 500 of it
    assert (lot["remaining_jpy"], lot["forfeited_jpy"]) == (0, 500)
    assert forfeit["amount_jpy"] == -500


async def test_overdraft_is_repaid_first_by_the_next_purchase(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    lot = f"lot:buy-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(hours=2), test_credits=0),
            ],
        )
        await wait_applied(conn, [f"open-{unique}"])
        await produce(
            settings,
            settings.topic_usage,
            [
                usage(f"u-{unique}", account, ago(hours=1), segments=30),
            ],
        )
        await wait_applied(conn, [f"u-{unique}"])
        row = await account_row(conn, account)
        assert (row["balance_jpy"], row["overdraft_jpy"]) == (-300, 300)

        await produce(
            settings,
            settings.topic_account_events,
            [
                purchased(f"buy-{unique}", account, ago(minutes=30), 1000),
            ],
        )
        await wait_applied(conn, [f"buy-{unique}"])
        row = await account_row(conn, account)
        remaining = await lot_remaining(conn, account)
        (grant,) = [e for e in await ledger(conn, account) if e["kind"] == "grant"]
        total = await conn.fetchval(
            "SELECT sum(amount_jpy) FROM ledger_entries WHERE account_id = $1", account
        )
    assert (row["balance_jpy"], row["overdraft_jpy"]) == (700, 0)
    assert remaining == {lot: 700}
    assert grant["amount_jpy"] == 1000
    assert grant["allocations"] == [{"lot_id": lot, "amount_jpy": 300}]
    assert total == 700
