"""`billing.balances.v1` read from the beginning holds every account's current state."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

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
    stamp,
    usage,
    wait_applied,
    wait_until,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FEED_FIELDS = (
    "account_id",
    "plan",
    "balance",
    "overdraft",
    "postpay_due",
    "credit",
    "next_expiry",
    "status",
    "version",
    "as_of",
)


async def read_feed(settings: Settings) -> list[tuple[bytes | None, int, dict[str, Any]]]:
    """(key, partition, value) of every message on the balance topic, in offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(settings.topic_balances) or set()
        tps = [TopicPartition(settings.topic_balances, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, int, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "balance topic not read to its end in 30 s"
            for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                out.extend((m.key, tp.partition, orjson.loads(m.value)) for m in msgs)
        return out
    finally:
        await consumer.stop()


def switched(event_id: str, account: str, at: Any) -> dict[str, Any]:
    return {
        "type": "switched_to_postpay",
        "event_id": event_id,
        "account_id": account,
        "occurred_at": stamp(at),
        "contract_id": f"K-{event_id}",
    }


async def test_the_feed_from_the_beginning_equals_every_account_shown_by_the_cli(
    settings: Settings, unique: str
) -> None:
    ok, low, broke, post, old, ghost = (
        f"{name}-{unique}" for name in ("ok", "low", "broke", "post", "old", "ghost")
    )
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"o-{ok}", ok, ago(days=5), test_credits=100),
                purchased(f"p-{ok}", ok, ago(days=4), 2000),
                opened(f"o-{low}", low, ago(days=5), test_credits=0),
                purchased(f"p-{low}", low, ago(days=5), 1000),
                reminder_set(f"r-{low}", low, ago(days=4), threshold=900),
                opened(f"o-{broke}", broke, ago(days=5), test_credits=50),
                opened(f"o-{post}", post, ago(days=5), test_credits=100),
                switched(f"s-{post}", post, ago(days=4)),
                # Its test credits expired 1 day ago: the expiry timer forfeits them.
                opened(f"o-{old}", old, ago(days=91), test_credits=100),
            ],
        )
        # Applied before the usage is sent: the switch must precede the postpay usage.
        await wait_applied(conn, [f"s-{post}", f"r-{low}", f"p-{ok}"])
        await produce(
            settings,
            settings.topic_usage,
            [
                usage(f"u1-{ok}", ok, ago(days=3), segments=3),
                usage(f"u1-{low}", low, ago(days=2), segments=15),
                usage(f"u1-{broke}", broke, ago(days=2), segments=8),
                usage(f"u1-{post}", post, ago(days=2), segments=20),
                usage(f"u1-{ghost}", ghost, ago(days=1), segments=1),
            ],
        )
        await wait_applied(conn, [f"u1-{a}" for a in (ok, low, broke, post, ghost)])
        await produce(settings, settings.topic_usage, [usage(f"u2-{ok}", ok, ago(hours=2))])
        await wait_applied(conn, [f"u2-{ok}"])

        async def settled() -> bool:
            forfeited = await conn.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'forfeit'",
                old,
            )
            unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            return bool(forfeited == 1 and unsent == 0)

        await wait_until(settled, 60, "the forfeit and every outbox row to be published")

    feed = await read_feed(settings)
    latest: dict[str, dict[str, Any]] = {}
    partition_of: dict[str, int] = {}
    for key, partition, value in feed:
        assert key == value["account_id"].encode()
        account = value["account_id"]
        # One account, one partition; versions only rise along it.
        assert partition_of.setdefault(account, partition) == partition
        if account in latest:
            assert value["version"] > latest[account]["version"]
        latest[account] = value
    accounts = {ok, low, broke, post, old, ghost}
    assert set(latest) == accounts

    for account in sorted(accounts):
        code, out, err = await run_cli(settings, "account", account, "--json")
        assert code == 0, err.decode()
        view = orjson.loads(out)
        assert {f: latest[account][f] for f in FEED_FIELDS} == {f: view[f] for f in FEED_FIELDS}

    # Hand-computed: JPY 10 a segment to Japan.
    assert (latest[ok]["balance"], latest[ok]["status"], latest[ok]["version"]) == (2060, "ok", 4)
    assert latest[ok]["next_expiry"]["amount"] == 60  # the test credits' lot, 100 - 30 - 10
    assert (latest[low]["balance"], latest[low]["status"]) == (850, "low")
    assert (latest[broke]["balance"], latest[broke]["overdraft"]) == (-30, 30)
    assert (latest[broke]["status"], latest[broke]["credit"]) == ("depleted", 0)
    assert (latest[post]["status"], latest[post]["postpay_due"]) == ("postpay", 100), latest[post]
    assert (latest[old]["balance"], latest[old]["version"], latest[old]["next_expiry"]) == (
        0,
        2,
        None,
    )
    assert (latest[ghost]["balance"], latest[ghost]["version"]) == (-10, 1)


async def test_reminders_and_the_cli_carry_the_forecast(settings: Settings, unique: str) -> None:
    account = f"fc-{unique}"
    await create_topics(settings)
    async with running_worker(settings), database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"o-{account}", account, ago(days=6), test_credits=0),
                purchased(f"p-{account}", account, ago(days=6), 1000),
                reminder_set(f"r-{account}", account, ago(days=6), threshold=300),
            ],
        )
        await wait_applied(conn, [f"r-{account}"])
        # 70 segments (JPY 700) over the past days, the last crossing the threshold.
        await produce(
            settings,
            settings.topic_usage,
            [usage(f"u{n}-{account}", account, ago(days=4 - n), segments=14) for n in range(5)],
        )
        await wait_applied(conn, [f"u{n}-{account}" for n in range(5)])

        async def sent() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL",
                settings.topic_reminders,
            )
            return bool(n >= 1)

        await wait_until(sent, 30, "the low_balance reminder to be published")
        (payload,) = await conn.fetch(
            "SELECT payload FROM outbox WHERE topic = $1", settings.topic_reminders
        )
    reminder = orjson.loads(payload["payload"])
    assert reminder["kind"] == "low_balance"
    # 700 charged in the 7 business days up to the reminder: 100 a day, 300 left: 3 days.
    forecast = reminder["forecast"]
    assert forecast["usage_jpy_per_day"] == 100
    assert forecast["expiring_unused_jpy"] == 0
    assert forecast["suggested_package_jpy"] == 9000
    assert forecast["runs_out_on"] is not None
    code, out, err = await run_cli(settings, "account", account, "--json")
    assert code == 0, err.decode()
    view = orjson.loads(out)
    assert view["forecast"]["usage_jpy_per_day"] == 100
    assert view["forecast"]["suggested_package_jpy"] == 9000
