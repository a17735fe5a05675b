"""SIGTERM in the middle of a burst: the worker finishes, commits, drains and exits 0.

The worker runs as a real `billing-worker run` process. Nothing may be lost or doubled: the
database must hold exactly what the group committed when the process exits, and after a
restart every usage event must be charged exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.kit import (
    CLI,
    ago,
    create_topics,
    database,
    opened,
    produce,
    reminder_set,
    settings_env,
    usage,
    wait_until,
)
from worker.adapters.kafka_admin import committed_and_end
from worker.adapters.kafka_connection import kafka_client_args
from worker.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNTS = 5
BACKLOG = 1500  # produced before the worker starts
MORE = 1500  # produced while it runs and is stopped


async def start_worker(settings: Settings, log: Path, **extra: str) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(CLI),
            "run",
            stdout=out,
            stderr=out,
            env=settings_env(settings, http_port="0", batch_max_records="50", **extra),
        )


async def stop_worker(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), timeout=90)


def log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


async def charges(settings: Settings, accounts: list[str]) -> tuple[int, int]:
    async with database(settings) as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT ref) AS distinct_refs FROM ledger_entries"
            " WHERE kind = 'charge' AND account_id = ANY($1::text[])",
            accounts,
        )
    assert row is not None
    return row["n"], row["distinct_refs"]


async def test_sigterm_mid_burst_exits_0_and_applies_every_event_exactly_once(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    accounts = [f"acc-{unique}-{i}" for i in range(ACCOUNTS)]
    start = ago(hours=2)
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_account_events,
        [
            event
            for i, account in enumerate(accounts)
            for event in (
                opened(f"open-{unique}-{i}", account, start, test_credits=1_000),
                reminder_set(
                    f"rem-{unique}-{i}", account, start, threshold=500, email=f"ops+{i}@example.jp"
                ),
            )
        ],
    )
    events = [
        usage(f"u-{unique}-{i}", accounts[i % ACCOUNTS], start + timedelta(seconds=i + 1))
        for i in range(BACKLOG + MORE)
    ]
    await produce(settings, settings.topic_usage, events[:BACKLOG])

    first_log = tmp_path / "worker-1.log"
    worker = await start_worker(settings, first_log)
    more = asyncio.create_task(produce(settings, settings.topic_usage, events[BACKLOG:]))

    async def charging() -> bool:
        return (await charges(settings, accounts))[0] > 0

    await wait_until(charging, timeout_s=60, what="the worker to be charging the burst")
    assert await stop_worker(worker) == 0
    await more

    # The batch in hand was finished and committed: the database holds exactly what the
    # group committed, per partition, and every committed outbox row was published.
    offsets = await committed_and_end(
        kafka_client_args(settings), settings.consumer_group, [settings.topic_usage]
    )
    async with database(settings) as conn:
        applied = dict(
            await conn.fetch(
                # A usage event's record is its charge entry (migration 0011).
                "SELECT partition, count(*) FROM ledger_entries"
                " WHERE kind = 'charge' AND account_id LIKE $1 GROUP BY partition",
                f"acc-{unique}-%",
            )
        )
        unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    assert {tp.partition: committed or 0 for tp, (committed, _) in offsets.items()} == {
        tp.partition: applied.get(tp.partition, 0) for tp in offsets
    }
    assert unsent == 0

    lines = log_lines(first_log)
    events_logged = [line["event"] for line in lines]
    assert [line["signal"] for line in lines if line["event"] == "shutdown_requested"] == [
        "SIGTERM"
    ]
    assert (
        events_logged.index("shutdown_requested")
        < events_logged.index("stream_stopped")
        < events_logged.index("outbox_drained")
        < events_logged.index("worker_stopped")
    )
    assert [line["clean"] for line in lines if line["event"] == "worker_stopped"] == [True]

    second_log = tmp_path / "worker-2.log"
    worker = await start_worker(settings, second_log)

    async def all_charged() -> bool:
        return (await charges(settings, accounts))[0] >= len(events)

    await wait_until(all_charged, timeout_s=120, what="the restarted worker to finish the burst")
    assert await stop_worker(worker) == 0
    assert await charges(settings, accounts) == (len(events), len(events))
    text = first_log.read_text() + second_log.read_text()
    assert "@example.jp" not in text  # reminder addresses are never logged


async def test_static_membership_is_accepted_and_a_restart_keeps_the_member(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """With BILLING_GROUP_INSTANCE_ID the broker (Kafka 4.x) registers a static member; on
    SIGTERM aiokafka does not leave the group, and a restart under the same id replaces it."""
    instance = f"worker-{unique}"
    await create_topics(settings)
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()

    async def members() -> list[str]:
        [described] = await admin.describe_consumer_groups([settings.consumer_group])
        [group] = described.groups
        return [member[0] for member in group[5]]  # member_id

    try:
        log = tmp_path / "worker.log"
        worker = await start_worker(settings, log, group_instance_id=instance)

        async def one_static_member() -> bool:
            found = await members()
            return len(found) == 1 and found[0].startswith(instance + "-")

        await wait_until(one_static_member, timeout_s=60, what="the static member to join")
        first = (await members())[0]
        assert await stop_worker(worker) == 0
        assert await members() == [first]  # still registered: a static member does not leave

        worker = await start_worker(settings, log, group_instance_id=instance)

        async def replaced() -> bool:
            found = await members()
            return len(found) == 1 and found[0] != first and found[0].startswith(instance)

        await wait_until(replaced, timeout_s=60, what="the restart to take the member's place")
        assert await stop_worker(worker) == 0
    finally:
        await admin.close()
