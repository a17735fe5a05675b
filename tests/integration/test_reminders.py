"""Top-up reminders through the real broker and database: once per crossing, re-armed, depleted."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.kit import (
    account_row,
    ago,
    create_topics,
    database,
    messages_for,
    opened,
    produce,
    purchased,
    reminder_set,
    running_worker,
    usage,
    wait_applied,
    wait_outbox_sent,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_low_balance_once_per_crossing_and_rearmed_by_a_purchase(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)

    async def step(topic: str, event: dict[str, object]) -> None:
        await produce(settings, topic, [event])
        await wait_applied(conn, [str(event["event_id"])])

    async with running_worker(settings), database(settings) as conn:
        await step(
            settings.topic_account_events,
            opened(f"open-{unique}", account, ago(hours=10), test_credits=1000),
        )
        await step(
            settings.topic_account_events,
            reminder_set(f"rem-{unique}", account, ago(hours=9), threshold=500),
        )
        await step(settings.topic_usage, usage(f"u1-{unique}", account, ago(hours=8), 40))  # 600
        await step(settings.topic_usage, usage(f"u2-{unique}", account, ago(hours=7), 20))  # 400
        await step(settings.topic_usage, usage(f"u3-{unique}", account, ago(hours=6), 10))  # 300
        await step(settings.topic_usage, usage(f"u4-{unique}", account, ago(hours=5), 5))  # 250
        await step(
            settings.topic_account_events, purchased(f"buy-{unique}", account, ago(hours=4), 1000)
        )  # 1250
        await step(settings.topic_usage, usage(f"u5-{unique}", account, ago(hours=3), 70))  # 550
        await step(settings.topic_usage, usage(f"u6-{unique}", account, ago(hours=2), 10))  # 450
        await step(settings.topic_usage, usage(f"u7-{unique}", account, ago(hours=1), 10))  # 350
        assert (await account_row(conn, account))["balance_jpy"] == 350
        sent = await wait_outbox_sent(conn, account, at_least=2, topic=settings.topic_reminders)
        # Every step was a batch of its own: ten versions, one snapshot each. A snapshot
        # superseded before the relay numbered it is deleted (ADR 0003), so the outbox keeps
        # an increasing subset of them that always ends with the newest.
        version = await conn.fetchval("SELECT version FROM accounts WHERE account_id = $1", account)
        snapshots = await conn.fetch(
            "SELECT payload FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = $2"
            " ORDER BY id",
            account,
            settings.topic_balances,
        )
        assert version == 10
        versions = [orjson.loads(r["payload"])["version"] for r in snapshots]
        assert versions == sorted(set(versions))
        assert set(versions) <= set(range(1, 11))
        assert versions[-1] == 10
    reminders = await messages_for(settings, settings.topic_reminders, account, at_least=sent)
    assert sent == 2
    assert [(r["kind"], r["balance"], r["threshold"], r["email"]) for r in reminders] == [
        ("low_balance", 400, 500, "ops@example.jp"),
        ("low_balance", 450, 500, "ops@example.jp"),
    ]
    # Deterministic ids, one per crossing, naming the charge that crossed.
    first, second = (r["reminder_id"] for r in reminders)
    assert first != second
    assert f"u2-{unique}" in first
    assert f"u6-{unique}" in second


async def test_enabling_the_reminder_below_the_threshold_sends_one_at_once(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(hours=3), test_credits=100),
                reminder_set(f"rem-{unique}", account, ago(hours=2), threshold=200),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"rem-{unique}"])
        await produce(
            settings, settings.topic_usage, [usage(f"u-{unique}", account, ago(hours=1), 1)]
        )
        await wait_applied(conn, [f"u-{unique}"])
        sent = await wait_outbox_sent(conn, account, topic=settings.topic_reminders)
    reminders = await messages_for(settings, settings.topic_reminders, account, at_least=sent)
    assert [(r["kind"], r["balance"]) for r in reminders] == [("low_balance", 100)]


async def test_balance_depleted_when_the_balance_reaches_zero(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    other = f"neg-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(hours=3), test_credits=100),
                opened(f"open2-{unique}", other, ago(hours=3), test_credits=100),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"open2-{unique}"])
        # Reminders are not enabled on either account: balance_depleted goes out anyway.
        await produce(
            settings,
            settings.topic_usage,
            [
                usage(f"u1-{unique}", account, ago(hours=2), 10),  # 100 -> 0
                usage(f"u2-{unique}", account, ago(hours=1), 1),  # 0 -> -10: no second one
                usage(f"v1-{unique}", other, ago(hours=2), 9),  # 100 -> 10
                usage(f"v2-{unique}", other, ago(hours=1), 3),  # 10 -> -20
            ],
        )
        await wait_applied(conn, [f"u1-{unique}", f"u2-{unique}", f"v1-{unique}", f"v2-{unique}"])
        sent = await wait_outbox_sent(conn, account, topic=settings.topic_reminders)
        sent_other = await wait_outbox_sent(conn, other, topic=settings.topic_reminders)
        rows = [await account_row(conn, a) for a in (account, other)]
    assert [(r["balance_jpy"], r["overdraft_jpy"]) for r in rows] == [(-10, 10), (-20, 20)]
    reminders = await messages_for(settings, settings.topic_reminders, account, at_least=sent)
    assert [(r["kind"], r["balance"], r["email"]) for r in reminders] == [
        ("balance_depleted", 0, None)
    ]
    reminders = await messages_for(settings, settings.topic_reminders, other, at_least=sent_other)
    assert [(r["kind"], r["balance"]) for r in reminders] == [("balance_depleted", -20)]
