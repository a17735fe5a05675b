"""The `billing-worker` command itself (`dlq replay`, `demo`) and the `/health` probe."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.integration.kit import (
    create_topics,
    database,
    produce,
    read_topic,
    run_cli,
    running_worker,
    wait_until,
)
from tests.integration.ops_kit import http_get, scrape, total
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_health_answers_ok_while_the_worker_runs(settings: Settings) -> None:
    await create_topics(settings)
    async with running_worker(settings) as worker:
        status, body = await http_get(worker, "/health")
    assert status == 200
    assert orjson.loads(body) == {"status": "ok"}


async def test_dlq_replay_command_sends_a_fixed_dead_letter_back_to_be_charged_once(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    account = f"fr-{unique}"
    event = {
        "event_id": f"fr-{unique}",
        "account_id": account,
        "destination": "+33612345678",  # France: no rate in the shipped table
        "occurred_at": "2026-11-02T10:00:00+09:00",
        "segments": 2,
    }
    await create_topics(settings)
    await produce(settings, settings.topic_usage, [event])
    async with running_worker(settings):
        (letter,) = await read_topic(settings, settings.topic_dlq, at_least=1)
    assert letter["error_code"] == "no_rate"
    rates = tmp_path / "rates.json"
    since = "2000-01-01T00:00:00+09:00"
    rates.write_text(
        json.dumps(
            [
                {"country": "JP", "unit_price_jpy": 10, "effective_from": since},
                {"country": "FR", "unit_price_jpy": 16, "effective_from": since},
            ]
        )
    )
    fixed = settings.model_copy(update={"rate_table_path": rates})

    code, out, err = await run_cli(fixed, "dlq", "replay", "--error-code", "no_rate", "--dry-run")
    assert code == 0, err
    assert "no_rate: 1" in out
    code, out, err = await run_cli(fixed, "dlq", "replay", "--error-code", "no_rate")
    assert code == 0, err
    assert out.strip().splitlines() == ["replayed 1 (no_rate: 1)", "skipped 0"]

    async with running_worker(fixed), database(settings) as conn:

        async def charged() -> list[tuple[str, int]]:
            rows = await conn.fetch(
                "SELECT kind, amount_jpy FROM ledger_entries WHERE account_id = $1", account
            )
            return [(r["kind"], r["amount_jpy"]) for r in rows]

        entries = await wait_until(charged, 30, "the replayed charge")
    assert entries == [("charge", -32)]  # 2 segments at JPY 16


async def test_demo_command_produces_traffic_the_worker_bills(settings: Settings) -> None:
    await create_topics(settings)
    async with running_worker(settings) as worker:
        code, _, err = await run_cli(
            settings,
            "demo",
            "--rate",
            "50",
            "--duration",
            "2",
            "--accounts",
            "3",
            "--malformed",
            "0",
            "--seed",
            # Not test_operations' seed: the same seed gives the same event ids, and both
            # tests share the session's database (they would be conflicting duplicates).
            "11",
        )
        assert code == 0, err
        sent = await read_topic(settings, settings.topic_usage) + await read_topic(
            settings, settings.topic_account_events
        )
        assert len(sent) > 3  # at least the three accounts' opening events and some usage

        async def all_handled() -> bool:
            samples = await scrape(worker)
            return total(samples, "billing_events_total") >= len(sent)

        await wait_until(all_handled, 60, "every demo event to be handled")
        samples = await scrape(worker)
    assert total(samples, "billing_events_total", outcome="applied") == len(sent)
    assert total(samples, "billing_events_total", outcome="dead_lettered") == 0
