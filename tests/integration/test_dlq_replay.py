"""A dead letter for a missing rate is applied once the rate exists and the DLQ is replayed."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tests.integration.kit import create_topics, produce, read_topic, running_worker, wait_until
from worker.config import Settings
from worker.entrypoints.dlq import replay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_replayed_dead_letter_is_charged_once(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    account = f"fr-{unique}"
    usage = {
        "event_id": f"fr-{unique}",
        "account_id": account,
        "destination": "+33612345678",
        "occurred_at": "2026-11-02T10:00:00+09:00",
        "segments": 2,
    }
    await create_topics(settings)
    await produce(settings, settings.topic_usage, [usage])
    async with running_worker(settings):
        (letter,) = await read_topic(settings, settings.topic_dlq, at_least=1)
    assert letter["error_code"] == "no_rate"
    assert json.loads(letter["payload"]) == usage

    rates = tmp_path / "rates.json"
    rates.write_text(
        json.dumps(
            [
                {
                    "country": "JP",
                    "unit_price_jpy": 10,
                    "effective_from": "2000-01-01T00:00:00+09:00",
                },
                {
                    "country": "FR",
                    "unit_price_jpy": 16,
                    "effective_from": "2000-01-01T00:00:00+09:00",
                },
            ]
        )
    )
    fixed = settings.model_copy(update={"rate_table_path": rates})
    report = await replay(fixed, {"no_rate"}, dry_run=False)
    assert (dict(report.replayed), dict(report.skipped), report.refused) == ({"no_rate": 1}, {}, [])
    again = await replay(fixed, set(), dry_run=False)
    assert (dict(again.replayed), dict(again.skipped)) == ({}, {})
    async with running_worker(fixed):
        conn = await asyncpg.connect(settings.database_url)
        try:

            async def charged() -> bool:
                total = await conn.fetchval(
                    "SELECT sum(amount_jpy) FROM ledger_entries WHERE account_id = $1", account
                )
                return total == -32

            await wait_until(charged, what="the replayed charge")
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM ledger_entries WHERE account_id = $1", account
                )
                == 1
            )
        finally:
            await conn.close()
