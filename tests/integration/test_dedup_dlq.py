"""Duplicates and bad input through the real broker: charged once, or dead-lettered with why."""

from __future__ import annotations

import base64

import orjson
import pytest

from tests.integration.kit import (
    account_row,
    ago,
    create_topics,
    database,
    ledger,
    messages_for,
    opened,
    produce,
    produce_positions,
    purchased,
    running_worker,
    usage,
    wait_applied,
    wait_outbox_sent,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_the_same_usage_delivered_three_times_is_charged_once(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    event = usage(f"u-{unique}", account, ago(hours=1), segments=3)
    # Same content, other key order and spacing: still the same event.
    again = orjson.dumps(dict(reversed(list(event.items())))).replace(b",", b", ")
    await create_topics(settings)
    async with running_worker(settings) as worker, database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{unique}", account, ago(hours=2), test_credits=100)],
        )
        await produce(settings, settings.topic_usage, [event, event])  # likely one batch
        await wait_applied(conn, [f"u-{unique}"])
        await produce(settings, settings.topic_usage, [again], key=account)  # a later batch
        marker = usage(f"marker-{unique}", account, ago(minutes=1), segments=1)
        await produce(settings, settings.topic_usage, [marker])
        await wait_applied(conn, [f"marker-{unique}"])
        charges = [e for e in await ledger(conn, account) if e["kind"] == "charge"]
        row = await account_row(conn, account)
        duplicates = worker.metrics.registry.get_sample_value(
            "billing_events_total", {"topic": settings.topic_usage, "outcome": "duplicate"}
        )
        dead = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = $2",
            account,
            settings.topic_dlq,
        )
    assert [(c["ref"], c["amount_jpy"]) for c in charges] == [
        (f"u-{unique}", -30),
        (f"marker-{unique}", -10),
    ]
    assert row["balance_jpy"] == 60
    assert duplicates == 2
    assert dead == 0


async def test_a_conflicting_duplicate_goes_to_the_dlq(settings: Settings, unique: str) -> None:
    account = f"acc-{unique}"
    first = usage(f"u-{unique}", account, ago(hours=1), segments=2)
    conflict = {**first, "segments": 5}
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{unique}", account, ago(hours=2), test_credits=100)],
        )
        await produce(settings, settings.topic_usage, [first])
        await wait_applied(conn, [f"u-{unique}"])
        ((partition, offset),) = await produce_positions(settings, settings.topic_usage, [conflict])
        sent = await wait_outbox_sent(conn, account, topic=settings.topic_dlq)
        row = await account_row(conn, account)
    assert row["balance_jpy"] == 80  # the first one only
    (dead,) = await messages_for(settings, settings.topic_dlq, account, at_least=sent)
    assert dead["error_code"] == "conflicting_duplicate"
    assert f"u-{unique}" in dead["reason"]
    assert (dead["source_topic"], dead["source_partition"], dead["source_offset"]) == (
        settings.topic_usage,
        partition,
        offset,
    )
    assert orjson.loads(base64.b64decode(dead["payload_base64"])) == conflict
    assert orjson.loads(dead["payload"]) == conflict
    assert dead["key"] == account


async def test_bad_input_is_dead_lettered_and_the_rest_keeps_flowing(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    at = ago(hours=1)
    malformed = b'{"event_id": "m-' + unique.encode() + b'", "account_id": '
    no_destination = {
        "event_id": f"s-{unique}",
        "account_id": account,
        "occurred_at": at.isoformat(),
        "segments": 1,
    }
    unknown_type = {
        "type": "account_closed",
        "event_id": f"t-{unique}",
        "account_id": account,
        "occurred_at": at.isoformat(),
    }
    odd_amount = purchased(f"odd-{unique}", account, at, 1500)
    small_invoice = purchased(f"inv-{unique}", account, at, 100_000, payment_method="invoice")
    no_rate = usage(f"fr-{unique}", account, at, destination="+33612345678")
    bad_usage = [malformed, no_destination, no_rate]
    bad_account = [unknown_type, odd_amount, small_invoice]
    await create_topics(settings)
    async with running_worker(settings) as worker, database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{unique}", account, ago(hours=2), test_credits=100)],
        )
        await wait_applied(conn, [f"open-{unique}"])
        usage_at = await produce_positions(settings, settings.topic_usage, bad_usage, key=account)
        account_at = await produce_positions(
            settings, settings.topic_account_events, bad_account, key=account
        )
        await produce(
            settings,
            settings.topic_usage,
            [usage(f"ok-{unique}", account, ago(minutes=5), segments=2)],
        )
        await produce(
            settings,
            settings.topic_account_events,
            [purchased(f"buy-{unique}", account, ago(minutes=4), 101_000, "invoice")],
        )
        await wait_applied(conn, [f"ok-{unique}", f"buy-{unique}"])
        sent = await wait_outbox_sent(conn, account, at_least=6)
        row = await account_row(conn, account)
        applied = await conn.fetchval(
            "SELECT count(*) FROM applied_events WHERE account_id = $1", account
        )
        dlq_metric = worker.metrics.registry.get_sample_value(
            "billing_dlq_messages_total", {"error_code": "no_rate"}
        )
    assert row["balance_jpy"] == 100 - 20 + 101_000
    assert applied == 3
    assert dlq_metric == 1
    letters = await messages_for(settings, settings.topic_dlq, account, at_least=sent)
    by_offset = {(d["source_topic"], d["source_partition"], d["source_offset"]): d for d in letters}
    assert len(letters) == len(by_offset) == 6
    expected = [
        (settings.topic_usage, usage_at[0], malformed, "malformed_json", "not valid JSON"),
        (settings.topic_usage, usage_at[1], no_destination, "schema_violation", "destination"),
        (settings.topic_usage, usage_at[2], no_rate, "no_rate", "FR"),
        (
            settings.topic_account_events,
            account_at[0],
            unknown_type,
            "unknown_type",
            "account_closed",
        ),
        (settings.topic_account_events, account_at[1], odd_amount, "invalid_amount", "1,000"),
        (
            settings.topic_account_events,
            account_at[2],
            small_invoice,
            "invoice_purchase_too_small",
            "100,000",
        ),
    ]
    for topic, (partition, offset), payload, code, why in expected:
        dead = by_offset[(topic, partition, offset)]
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        assert base64.b64decode(dead["payload_base64"]) == raw
        assert dead["payload"] == raw.decode()
        assert dead["key"] == account
        assert dead["error_code"] == code, dead
        assert why in dead["reason"], dead
