"""Operating the worker: `/metrics`, `/ready`, `billing-worker lag` and the demo traffic."""

from __future__ import annotations

import io
import math
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from rich.console import Console

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    produce,
    run_cli,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from tests.integration.ops_kit import (
    private_kafka,
    private_postgres,
    ready,
    scrape,
    total,
)
from worker.config import Settings
from worker.entrypoints.demo import Options, run_demo

pytestmark = pytest.mark.integration

LAG = "kafka_consumergroup_lag"


def burst(unique: str, account: str, n: int, prefix: str = "u") -> list[dict[str, object]]:
    start = ago(minutes=30)
    return [
        usage(f"{prefix}-{unique}-{i}", account, start + timedelta(seconds=i)) for i in range(n)
    ]


async def test_metrics_show_lag_rising_during_a_burst_and_falling_to_zero_after(
    settings: Settings, unique: str
) -> None:
    settings = settings.model_copy(update={"lag_refresh_interval_s": 0.2})
    account = f"acc-{unique}"
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_account_events,
        [opened(f"open-{unique}", account, ago(hours=1), test_credits=100_000)],
    )
    async with running_worker(settings) as worker:
        group = settings.consumer_group

        async def lag_is(value: int) -> bool:
            samples = await scrape(worker)
            return (
                total(samples, LAG, consumergroup=group) == value
                and total(samples, "billing_events_total", outcome="applied") >= 1
            )

        await wait_until(lambda: lag_is(0), what="the opening to be applied and committed")

        # Hold the consumer still, so the burst piles up as lag whatever the machine's speed.
        assert worker.stream is not None
        assert worker.stream.consumer is not None
        consumer = worker.stream.consumer
        owned = consumer.assignment()
        consumer.pause(*owned)
        await produce(settings, settings.topic_usage, burst(unique, account, 200))
        await wait_until(lambda: lag_is(200), what="/metrics to show the burst as lag")

        async def late() -> bool:
            return total(await scrape(worker), LAG + "_seconds", consumergroup=group) > 0.5

        await wait_until(late, what="/metrics to show the held-back burst as time lag")

        consumer.resume(*owned)
        await wait_until(lambda: lag_is(0), what="/metrics to show the lag drained")
        samples = await scrape(worker)

    assert (
        total(samples, "billing_events_total", topic=settings.topic_usage, outcome="applied") == 200
    )
    per_partition = {dict(labels)["partition"] for (name, labels) in samples if name == LAG}
    assert per_partition == {"0", "1", "2"}  # both topics, three partitions each
    lagged = {labels for (name, labels) in samples if name == LAG}
    assert {labels for (name, labels) in samples if name == LAG + "_seconds"} == lagged
    assert total(samples, LAG + "_seconds", consumergroup=group) == 0  # drained: no time lag
    assert total(samples, "billing_batch_size_count") >= 2
    assert total(samples, "billing_batch_duration_seconds_count") >= 2
    assert total(samples, "billing_assigned_partitions") == 6
    since = [labels for (name, labels) in samples if name == "billing_seconds_since_last_commit"]
    assert len(since) == 6
    assert ("billing_outbox_backlog", frozenset()) in samples
    assert ("billing_outbox_oldest_unsent_seconds", frozenset()) in samples
    assert ("billing_outbox_parked_rows", frozenset()) in samples
    assert not [name for (name, _) in samples if name.endswith("_created")]


async def test_lag_command_reports_the_group_with_and_without_a_running_worker(
    settings: Settings, unique: str
) -> None:
    account = f"acc-{unique}"
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_account_events,
        [opened(f"open-{unique}", account, ago(hours=1), test_credits=10_000)],
    )
    await produce(settings, settings.topic_usage, burst(unique, account, 30))

    code, out, err = await run_cli(settings, "lag", "--json")
    assert code == 0, err
    before = orjson.loads(out)
    assert before["group"] == settings.consumer_group
    assert before["total"] == 31
    assert len(before["partitions"]) == 6
    assert all(row["committed"] is None for row in before["partitions"])
    assert (await run_cli(settings, "lag", "--max-lag", "30"))[0] == 1
    assert (await run_cli(settings, "lag", "--max-lag", "31"))[0] == 0

    async with running_worker(settings):

        async def caught_up() -> bool:
            code, out, _ = await run_cli(settings, "lag", "--json")
            return code == 0 and orjson.loads(out)["total"] == 0

        await wait_until(caught_up, what="`billing-worker lag` to report the group caught up")
        code, out, _ = await run_cli(settings, "lag", "--json")
        running = orjson.loads(out)

    # A partition that never held a record is never committed: its lag is 0 all the same.
    assert all((row["committed"] or 0) == row["end"] for row in running["partitions"])
    assert all(row["lag"] == 0 for row in running["partitions"])
    assert sum(row["end"] for row in running["partitions"]) == 31
    code, out, _ = await run_cli(settings, "lag", "--json", "--max-lag", "0")
    assert code == 0
    assert orjson.loads(out)["partitions"] == running["partitions"]
    code, text, _ = await run_cli(settings, "lag")
    assert code == 0
    assert "total lag: 0" in text


async def test_lag_reports_how_long_ago_the_oldest_uncommitted_record_reached_kafka(
    settings: Settings, unique: str
) -> None:
    await create_topics(settings, producer_stamped=True)
    usage_topic = settings.topic_usage
    now_ms = int(time.time() * 1000)
    # (partition, seconds ago) in offset order; the broker keeps the producer's timestamps
    records = [(0, 300), (0, 200), (0, 100), (1, 50), (1, 40)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for partition, ago_s in records:
            await producer.send_and_wait(
                usage_topic,
                b"{}",
                key=b"k",
                partition=partition,
                timestamp_ms=now_ms - ago_s * 1000,
            )
    finally:
        await producer.stop()
    # The group has applied offset 0 of partition 0 (commits 1) and nothing of partition 1.
    committer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await committer.start()
    try:
        committer.assign([TopicPartition(usage_topic, 0)])
        await committer.commit({TopicPartition(usage_topic, 0): OffsetAndMetadata(1, "")})
    finally:
        await committer.stop()

    code, out, err = await run_cli(settings, "lag", "--json")
    assert code == 0, err
    measured_at_ms = int(time.time() * 1000)
    rows = {(r["topic"], r["partition"]): r for r in orjson.loads(out)["partitions"]}
    elapsed_s = (measured_at_ms - now_ms) / 1000
    p0, p1 = rows[(usage_topic, 0)], rows[(usage_topic, 1)]
    assert (p0["committed"], p0["end"], p0["lag"]) == (1, 3, 2)
    assert 200 <= p0["lag_seconds"] <= 200 + elapsed_s + 1  # offset 1, sent 200 s ago
    assert (p1["committed"], p1["end"], p1["lag"]) == (None, 2, 2)
    assert 50 <= p1["lag_seconds"] <= 50 + elapsed_s + 1  # offset 0, sent 50 s ago
    others = [r for key, r in rows.items() if key not in {(usage_topic, 0), (usage_topic, 1)}]
    assert len(others) == 4
    assert all((r["lag"], r["lag_seconds"]) == (0, 0.0) for r in others)

    code, text, err = await run_cli(settings, "lag")
    assert code == 0, err
    header, *table = text.splitlines()
    assert header.split() == [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "LAG-SECONDS",
    ]
    cells = {tuple(line.split()[1:3]): line.split() for line in table[:-1]}
    assert cells[(usage_topic, "1")][3:6] == ["-", "2", "2"]
    assert float(cells[(usage_topic, "0")][6]) >= 200
    assert table[-1] == "total lag: 4"


async def test_a_transaction_marker_after_the_committed_offset_is_no_time_lag(
    settings: Settings, unique: str
) -> None:
    await create_topics(settings)
    topic = settings.topic_usage
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, transactional_id=f"tx-{unique}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"{}", key=b"k", partition=0)
    finally:
        await producer.stop()
    # The worker commits last record + 1; the commit marker behind it stays as offset lag.
    committer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "")})
    finally:
        await committer.stop()

    code, out, err = await run_cli(settings, "lag", "--json")
    assert code == 0, err
    row = next(
        r for r in orjson.loads(out)["partitions"] if (r["topic"], r["partition"]) == (topic, 0)
    )
    assert (row["committed"], row["end"], row["lag"], row["lag_seconds"]) == (1, 2, 1, 0.0)


async def test_ready_turns_false_when_postgres_stops_and_true_after_it_restarts(
    settings: Settings,
) -> None:
    await create_topics(settings)
    async with private_postgres() as pg:
        own = settings.model_copy(
            update={
                "database_url": pg.url,
                "lag_refresh_interval_s": 0.5,
                "month_close_enabled": True,  # a private database: no other test's months
            }
        )
        async with running_worker(own) as worker:

            async def readiness(expected: bool) -> bool:
                status, body = await ready(worker)
                return status == (200 if expected else 503) and body["ready"] is expected

            await wait_until(lambda: readiness(True), what="/ready to say ready")
            _, body = await ready(worker)
            assert set(body["checks"]) == {
                "running",
                "postgres",
                "kafka",
                "inputs",
                "assignment",
                "progress",
                "outbox",
            }

            async def outbox_read() -> bool:
                _, body = await ready(worker)
                return bool(body["checks"]["outbox"] == {"ok": True, "detail": "no message parked"})

            await wait_until(outbox_read, what="/ready to report the outbox's parked rows")
            assert total(await scrape(worker), "billing_ready") == 1

            # A fresh database has nothing to invoice: every ended month closes at once and the
            # running month is next, due at its end in Tokyo plus the grace.
            async def due_known() -> bool:
                due = total(await scrape(worker), "billing_month_close_due_timestamp_seconds")
                return not math.isnan(due)

            await wait_until(due_known, what="the month closer's first tick")
            tokyo = ZoneInfo("Asia/Tokyo")
            grace = timedelta(seconds=own.month_close_grace_s)
            local = (datetime.now(UTC) - grace).astimezone(tokyo)
            next_start = datetime(
                local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=tokyo
            )
            due = total(await scrape(worker), "billing_month_close_due_timestamp_seconds")
            assert due == (next_start + grace).timestamp()

            await pg.stop()
            await wait_until(lambda: readiness(False), what="/ready to notice PostgreSQL is gone")
            _, body = await ready(worker)
            assert body["checks"]["postgres"]["ok"] is False
            assert body["checks"]["kafka"]["ok"] is True
            assert total(await scrape(worker), "billing_ready") == 0

            await pg.start()
            await wait_until(lambda: readiness(True), what="/ready to recover with PostgreSQL")
            assert total(await scrape(worker), "billing_ready") == 1


@pytest.mark.timeout(400)
async def test_ready_turns_false_when_the_broker_stops_and_true_after_it_restarts(
    settings: Settings,
) -> None:
    async with private_kafka() as broker:
        own = settings.model_copy(
            update={"kafka_bootstrap_servers": broker.bootstrap, "lag_refresh_interval_s": 0.5}
        )
        await create_topics(own)
        async with running_worker(own) as worker:

            async def readiness(expected: bool) -> bool:
                status, body = await ready(worker)
                return status == (200 if expected else 503) and body["ready"] is expected

            await wait_until(lambda: readiness(True), 60, "/ready to say ready")

            await broker.stop()
            await wait_until(lambda: readiness(False), 60, "/ready to notice the broker is gone")
            _, body = await ready(worker)
            kafka = body["checks"]["kafka"]
            assert kafka["ok"] is False
            assert kafka["detail"], "not ready must say why"
            assert body["checks"]["postgres"]["ok"] is True
            assert total(await scrape(worker), "billing_ready") == 0

            await broker.start()
            await wait_until(lambda: readiness(True), 180, "/ready to recover with the broker")
            assert total(await scrape(worker), "billing_ready") == 1
            # Recovered for real: a record sent now is applied.
            await produce(own, own.topic_account_events, [opened("back-1", "acc-back", ago())])
            async with database(own) as conn:
                await wait_applied(conn, ["back-1"], 90)


async def test_demo_traffic_is_billed_and_only_its_malformed_events_are_dead_lettered(
    settings: Settings,
) -> None:
    await create_topics(settings)
    options = Options(rate=300, duration_s=2, accounts=8, malformed_share=0.05, seed=7)
    console = Console(file=io.StringIO(), width=120)
    async with running_worker(settings) as worker:
        totals = await run_demo(settings, options, console)

        async def all_handled() -> bool:
            samples = await scrape(worker)
            return total(samples, "billing_events_total") == totals.produced

        await wait_until(all_handled, what="every demo event to be applied or dead-lettered")
        samples = await scrape(worker)

    assert totals.failed == 0
    assert totals.produced > options.accounts * 2
    assert 0 < totals.malformed < totals.produced
    assert total(samples, "billing_events_total", outcome="dead_lettered") == totals.malformed
    assert (
        total(samples, "billing_events_total", outcome="applied")
        == totals.produced - totals.malformed
    )
    async with database(settings) as conn:
        plans = dict(
            await conn.fetch(
                "SELECT account_id, plan FROM accounts WHERE account_id = ANY($1::text[])",
                totals.accounts,
            )
        )
    assert set(plans) == set(totals.accounts)
    assert "postpay" in plans.values()
    assert "prepay" in plans.values()
    assert "reminders" in console.file.getvalue()  # type: ignore[attr-defined]
