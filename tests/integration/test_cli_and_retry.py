"""`billing-worker account ID --json` against the real database, and the retry helper."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import orjson
import pytest

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    produce,
    purchased,
    reminder_set,
    run_cli,
    running_worker,
    usage,
    wait_applied,
)
from worker.config import Settings
from worker.errors import ShuttingDown
from worker.metrics import Metrics
from worker.retry import retry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_account_json_shows_balance_overdraft_reminder_and_lots(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    opened_at, bought_at = ago(days=3), ago(days=2)
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, opened_at, test_credits=100),
                purchased(f"buy-{unique}", account, bought_at, 1000),
                reminder_set(f"rem-{unique}", account, ago(days=1), threshold=300),
            ],
        )
        await wait_applied(conn, [f"open-{unique}", f"buy-{unique}", f"rem-{unique}"])
        await produce(
            settings,
            settings.topic_usage,
            [usage(f"u-{unique}", account, ago(hours=1), segments=15)],
        )
        await wait_applied(conn, [f"u-{unique}"])
    code, out, err = await run_cli(settings, "account", account, "--json")
    assert code == 0, err
    view = orjson.loads(out)
    assert view["account_id"] == account
    assert view["plan"] == "prepay"
    assert (view["balance"], view["overdraft"]) == (950, 0)
    assert view["reminder"] == {"enabled": True, "threshold": 300}
    lots = {lot["lot_id"]: lot for lot in view["lots"]}
    assert set(lots) == {f"lot:open-{unique}", f"lot:buy-{unique}"}
    test_lot, bought = lots[f"lot:open-{unique}"], lots[f"lot:buy-{unique}"]
    assert (test_lot["amount"], test_lot["remaining"]) == (100, 0)
    assert (bought["amount"], bought["remaining"]) == (1000, 950)
    assert [lot["lot_id"] for lot in view["lots"]] == [f"lot:open-{unique}", f"lot:buy-{unique}"]
    for lot in view["lots"]:
        assert {"granted_at", "expires_at"} <= set(lot)
    for lot_view, granted in ((test_lot, opened_at), (bought, bought_at)):
        assert datetime.fromisoformat(lot_view["granted_at"]) == granted
        assert datetime.fromisoformat(lot_view["expires_at"]) == granted + timedelta(days=90)
    ledger = sorted(
        (e["occurred_at"], e["entry_id"], e["kind"], e["amount"], e["balance_after"])
        for e in view["ledger"]
    )
    assert [row[1:] for row in ledger] == [
        (f"grant:open-{unique}", "grant", 100, 100),
        (f"grant:buy-{unique}", "grant", 1000, 1100),
        (f"charge:u-{unique}", "charge", -150, 950),
    ]


async def test_account_json_exits_2_for_an_unknown_account(settings: Settings, unique: str) -> None:
    code, out, err = await run_cli(settings, "account", f"nobody-{unique}", "--json")
    assert code == 2
    assert out == ""
    assert f"nobody-{unique}" in err


async def test_retry_survives_a_flaky_action_and_counts_the_retries() -> None:
    metrics = Metrics()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("connection refused")
        return "done"

    result = await retry("flaky_op", flaky, asyncio.Event(), metrics, max_backoff_s=0.2)
    assert (result, calls) == ("done", 3)
    assert (
        metrics.registry.get_sample_value(
            "billing_retries_total", {"operation": "flaky_op", "cause": "OSError"}
        )
        == 2
    )


async def test_retry_gives_up_at_once_on_a_bug_and_when_stopping() -> None:
    metrics = Metrics()

    async def broken() -> None:
        raise ValueError("a bug, not infrastructure")

    with pytest.raises(ValueError, match="a bug"):
        await retry("broken_op", broken, asyncio.Event(), metrics, max_backoff_s=0.2)
    assert (
        metrics.registry.get_sample_value(
            "billing_retries_total", {"operation": "broken_op", "cause": "ValueError"}
        )
        is None
    )

    stop = asyncio.Event()
    stop.set()

    async def down() -> None:
        raise OSError("still down")

    with pytest.raises(ShuttingDown):
        await retry("down_op", down, stop, metrics, max_backoff_s=0.2)
