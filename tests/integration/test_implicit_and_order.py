"""Accounts never opened, and event-time order across the two input topics."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.integration.kit import (
    account_row,
    ago,
    create_topics,
    database,
    ledger,
    lot_remaining,
    messages_for,
    opened,
    produce,
    purchased,
    running_worker,
    usage,
    wait_applied,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_usage_for_an_unopened_account_is_charged_to_an_implicit_prepay_account(
    settings: Settings, unique: str
) -> None:
    account = f"ghost-{unique}"
    await create_topics(settings)
    async with running_worker(settings) as worker, database(settings) as conn:
        before = worker.metrics.registry.get_sample_value("billing_implicit_accounts_total")
        await produce(
            settings,
            settings.topic_usage,
            [
                usage(f"u1-{unique}", account, ago(hours=2), segments=2),
                usage(f"u2-{unique}", account, ago(hours=1), segments=1),
            ],
        )
        await wait_applied(conn, [f"u1-{unique}", f"u2-{unique}"])
        row = await account_row(conn, account)
        after = worker.metrics.registry.get_sample_value("billing_implicit_accounts_total")
        charges = [e["amount_jpy"] for e in await ledger(conn, account)]
    assert (row["plan"], row["opened"]) == ("prepay", False)
    assert (row["balance_jpy"], row["overdraft_jpy"]) == (-30, 30)
    assert sorted(charges) == [-20, -10]
    assert before is not None
    assert after is not None
    assert after - before == 1  # one account, however many events


async def test_a_backlog_is_applied_in_event_time_order_across_topics(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    ten = ago(hours=3).replace(minute=0, second=0, microsecond=0)
    await create_topics(settings)
    # Worker stopped: the usage at 10:05 is in its topic before the purchase at 10:00 is.
    await produce(
        settings,
        settings.topic_account_events,
        [opened(f"open-{unique}", account, ten - timedelta(hours=1), test_credits=0)],
    )
    await produce(
        settings,
        settings.topic_usage,
        [usage(f"u-{unique}", account, ten + timedelta(minutes=5), segments=50)],
    )
    await produce(
        settings, settings.topic_account_events, [purchased(f"buy-{unique}", account, ten, 1000)]
    )
    async with running_worker(settings), database(settings) as conn:
        await wait_applied(conn, [f"open-{unique}", f"u-{unique}", f"buy-{unique}"])
        row = await account_row(conn, account)
        entries = {e["ref"]: e for e in await ledger(conn, account)}
        remaining = await lot_remaining(conn, account)
        outbox = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic <> $2",
            account,
            settings.topic_balances,
        )
    assert (row["balance_jpy"], row["overdraft_jpy"]) == (500, 0)
    assert remaining == {f"lot:buy-{unique}": 500}
    assert entries[f"buy-{unique}"]["allocations"] == []  # nothing to repay: no overdraft
    assert entries[f"u-{unique}"]["allocations"] == [
        {"lot_id": f"lot:buy-{unique}", "amount_jpy": 500}
    ]
    assert entries[f"u-{unique}"]["balance_after_jpy"] == 500
    assert outbox == 0  # in particular no balance_depleted
    assert await messages_for(settings, settings.topic_reminders, account) == []
