"""A usage event goes through the real broker into PostgreSQL and a reminder comes back out."""

from __future__ import annotations

import asyncpg
import pytest

from tests.integration.kit import create_topics, produce, read_topic, running_worker, wait_until
from worker.config import Settings

pytestmark = pytest.mark.integration


async def test_usage_is_charged_and_reminder_published(settings: Settings, unique: str) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_account_events,
        [
            {
                "type": "account_opened",
                "event_id": f"open-{unique}",
                "account_id": account,
                "occurred_at": "2026-11-01T09:00:00+09:00",
                "test_credits": 100,
            },
            {
                "type": "reminder_configured",
                "event_id": f"rem-{unique}",
                "account_id": account,
                "occurred_at": "2026-11-01T09:01:00+09:00",
                "enabled": True,
                "threshold": 50,
                "email": "ops@example.jp",
            },
        ],
    )
    await produce(
        settings,
        settings.topic_usage,
        [
            {
                "event_id": f"u-{unique}",
                "account_id": account,
                "destination": "+819012345678",
                "occurred_at": "2026-11-01T09:02:00+09:00",
                "segments": 6,
            },
        ],
    )
    async with running_worker(settings):
        conn = await asyncpg.connect(settings.database_url)
        try:

            async def charged() -> bool:
                value = await conn.fetchval(
                    "SELECT sum(amount_jpy) FROM ledger_entries WHERE account_id = $1", account
                )
                return value == 40

            await wait_until(charged, what="the charge in the ledger")
        finally:
            await conn.close()
        reminders = await read_topic(settings, settings.topic_reminders, at_least=1)
    assert [(r["kind"], r["balance"], r["account_id"]) for r in reminders] == [
        ("low_balance", 40, account)
    ]
