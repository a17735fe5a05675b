"""The expiry sweep on a timer, and two workers sweeping at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    ledger,
    messages_for,
    opened,
    produce,
    purchased,
    read_topic,
    running_worker,
    wait_applied,
    wait_outbox_sent,
    wait_until,
)
from worker.adapters.postgres import PgStore
from worker.builders import create_pool, encoder_from, policy_from
from worker.config import Settings
from worker.domain.commands import OpenAccount, PurchaseCredits
from worker.service.billing import sweep_expiry
from worker.service.ports import Changes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_the_timer_forfeits_expired_lots_and_announces_expiring_ones_once(
    settings: Settings, unique: str
) -> None:
    gone, soon = f"gone-{unique}", f"soon-{unique}"
    gone_lot, soon_lot = f"lot:open-{unique}", f"lot:buy-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                # Expired a day ago: past expiry plus the lateness allowance.
                opened(f"open-{unique}", gone, ago(days=91), test_credits=500),
                # Expires in five days: inside the seven-day notice.
                opened(f"open2-{unique}", soon, ago(days=85), test_credits=0),
                purchased(f"buy-{unique}", soon, ago(days=85), 2000),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"open2-{unique}", f"buy-{unique}"])

        async def forfeited() -> bool:
            return bool(
                await conn.fetchval("SELECT forfeited FROM lots WHERE lot_id = $1", gone_lot)
            )

        async def notified() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT expiring_notified FROM lots WHERE lot_id = $1", soon_lot
                )
            )

        await wait_until(forfeited, what="the sweep to forfeit the expired lot")
        await wait_until(notified, what="the sweep to announce the expiring lot")
        # More sweeps, by this worker's timer and by another caller, change nothing.
        store = PgStore(await create_pool(settings, 2))
        try:
            now = datetime.now(UTC)
            for _ in range(2):
                await sweep_expiry(store, now, policy_from(settings), encoder_from(settings))
        finally:
            await store.pool.close()
        sent_gone = await wait_outbox_sent(conn, gone, at_least=2)
        sent_soon = await wait_outbox_sent(conn, soon)
        gone_entries = await ledger(conn, gone)
        soon_entries = await ledger(conn, soon)
        gone_row = await conn.fetchrow("SELECT * FROM lots WHERE lot_id = $1", gone_lot)
        balances = [
            await conn.fetchval("SELECT balance_jpy FROM accounts WHERE account_id = $1", a)
            for a in (gone, soon)
        ]
    assert [(e["kind"], e["amount_jpy"], e["ref"]) for e in gone_entries] == [
        ("grant", 500, f"open-{unique}"),
        ("forfeit", -500, gone_lot),
    ]
    assert (gone_row["remaining_jpy"], gone_row["forfeited_jpy"]) == (0, 500)
    assert [e["kind"] for e in soon_entries] == ["grant"]
    assert balances == [0, 2000]

    gone_msgs = await messages_for(settings, settings.topic_reminders, gone, at_least=sent_gone)
    expired = [m for m in gone_msgs if m["kind"] == "credits_expired"]
    assert len(expired) == 1
    assert (expired[0]["lot_id"], expired[0]["amount"]) == (gone_lot, 500)
    # Its notice moment passed while no timer ran: the notice still comes, before the forfeit.
    assert sorted(m["kind"] for m in gone_msgs) == [
        "balance_depleted",
        "credits_expired",
        "credits_expiring",
    ]

    soon_msgs = await messages_for(settings, settings.topic_reminders, soon, at_least=sent_soon)
    assert [(m["kind"], m["lot_id"], m["amount"]) for m in soon_msgs] == [
        ("credits_expiring", soon_lot, 2000)
    ]


async def test_two_sweeps_at_once_forfeit_each_lot_once(settings: Settings, unique: str) -> None:
    policy, encoder = policy_from(settings), encoder_from(settings)
    ids = [f"sweep-{unique}-{n:02d}" for n in range(20)]
    pools = [await create_pool(settings, 4) for _ in range(2)]
    try:
        store = PgStore(pools[0])
        async with store.unit_of_work() as uow:
            accounts = await uow.lock_accounts(ids)
            changes = Changes(accounts=list(accounts.values()))
            for a in changes.accounts:
                a.apply(
                    OpenAccount(f"open-{a.account_id}", a.account_id, ago(days=95), 300),
                    policy,
                    changes.effects,
                )
                a.apply(
                    PurchaseCredits(
                        f"buy-{a.account_id}", a.account_id, ago(days=86), "p", 1000, "credit_card"
                    ),
                    policy,
                    changes.effects,
                )
            await uow.save(changes)
        now = datetime.now(UTC)
        results = await asyncio.gather(
            *(sweep_expiry(PgStore(pool), now, policy, encoder) for pool in pools),
            return_exceptions=True,
        )
    finally:
        for pool in pools:
            await pool.close()
    assert not [r for r in results if isinstance(r, BaseException)], results

    async with database(settings) as conn:
        forfeits = await conn.fetch(
            "SELECT account_id, amount_jpy FROM ledger_entries"
            " WHERE kind = 'forfeit' AND account_id = ANY($1::text[])",
            ids,
        )
        lots = await conn.fetch(
            "SELECT lot_id, remaining_jpy, forfeited_jpy, forfeited, expiring_notified"
            " FROM lots WHERE account_id = ANY($1::text[])",
            ids,
        )
        outbox = await conn.fetch(
            "SELECT payload FROM outbox WHERE key = ANY($1::bytea[]) AND topic = $2",
            [i.encode() for i in ids],
            settings.topic_reminders,
        )
        snapshots = await conn.fetch(
            "SELECT convert_from(key, 'UTF8') AS key, payload FROM outbox"
            " WHERE key = ANY($1::bytea[]) AND topic = $2",
            [i.encode() for i in ids],
            settings.topic_balances,
        )
        balances = await conn.fetch(
            "SELECT balance_jpy FROM accounts WHERE account_id = ANY($1::text[])", ids
        )
    assert sorted(r["account_id"] for r in forfeits) == ids
    assert {r["amount_jpy"] for r in forfeits} == {-300}
    for lot in lots:
        if lot["lot_id"].startswith("lot:open-"):
            assert (lot["remaining_jpy"], lot["forfeited_jpy"], lot["forfeited"]) == (0, 300, True)
        else:
            assert (lot["remaining_jpy"], lot["forfeited"], lot["expiring_notified"]) == (
                1000,
                False,
                True,
            )
    assert {r["balance_jpy"] for r in balances} == {1000}
    kinds = sorted(orjson.loads(m["payload"])["kind"] for m in outbox)
    # Each test-credit lot is announced (its notice moment passed too) and then forfeited.
    assert kinds == ["credits_expired"] * 20 + ["credits_expiring"] * 40
    # One balance snapshot per account: the forfeit; the notices alone change nothing.
    assert sorted(r["key"] for r in snapshots) == ids
    assert {orjson.loads(r["payload"])["balance"] for r in snapshots} == {1000}

    # Relay them: each reminder reaches the topic once.
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        for account in ids:
            await wait_outbox_sent(conn, account, at_least=3)
    published = [
        m
        for m in await read_topic(settings, settings.topic_reminders, at_least=60)
        if m["account_id"] in ids
    ]
    assert sorted((m["account_id"], m["kind"]) for m in published) == sorted(
        (a, kind)
        for a in ids
        for kind in ("credits_expired", "credits_expiring", "credits_expiring")
    )
