"""After an outage longer than the lateness allowance, the expiry timer must not forfeit a lot
before the backlog usage that reached Kafka in time has been applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    ledger,
    running_worker,
    usage,
    wait_until,
)
from worker.adapters.postgres import PgStore
from worker.builders import create_pool, encoder_from, policy_from
from worker.config import Settings
from worker.domain.commands import OpenAccount
from worker.entrypoints.expiry_sweep import ExpirySweep
from worker.service.ports import Changes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_the_timer_waits_for_the_backlog_before_forfeiting(
    settings: Settings, unique: str
) -> None:
    # The record's arrival is dated by its producer here: CreateTime inputs, allowed.
    settings = settings.model_copy(update={"allow_create_time_inputs": True})
    await create_topics(settings, producer_stamped=True)
    policy, encoder = policy_from(settings), encoder_from(settings)
    account = f"outage-{unique}"
    opened_at = ago(days=90, hours=3)
    expires_at = opened_at + policy.lot_validity  # three hours ago: past the 1 h allowance
    pool = await create_pool(settings, 2)
    try:
        store = PgStore(pool)
        # Applied before the outage began.
        async with store.unit_of_work() as uow:
            # As the stream would: with the partition the account's records arrive on.
            partition = (murmur2(account.encode()) & 0x7FFFFFFF) % settings.input_partitions
            accounts = await uow.lock_accounts([account], {account: partition})
            changes = Changes(accounts=list(accounts.values()))
            accounts[account].apply(
                OpenAccount(f"open-{unique}", account, opened_at, 300), policy, changes.effects
            )
            await uow.save(changes)
        # During the outage: usage that happened and reached Kafka before the lot expired.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            arrived = expires_at - timedelta(minutes=20)
            await producer.send_and_wait(
                settings.topic_usage,
                orjson.dumps(usage(f"u-{unique}", account, expires_at - timedelta(minutes=30), 5)),
                key=account.encode(),
                timestamp_ms=int(arrived.timestamp() * 1000),
            )
        finally:
            await producer.stop()

        # The worker restarts: its timer runs before the stream has applied anything.
        timer = ExpirySweep(settings, store, policy, encoder)
        try:
            now = datetime.now(UTC)
            assert await timer.tick(now) == 0  # notes the cutoff and the end offsets
            assert timer.mark is not None
            assert await timer.tick(now) == 0  # the group has not consumed them: no sweep
        finally:
            await timer.reader.close()
        async with database(settings) as conn:
            assert [e["kind"] for e in await ledger(conn, account)] == ["grant"]
    finally:
        await pool.close()

    async with running_worker(settings), database(settings) as conn:

        async def forfeited() -> bool:
            return "forfeit" in [e["kind"] for e in await ledger(conn, account)]

        await wait_until(forfeited, 60, "the lot to be forfeited after the backlog")
        entries = await ledger(conn, account)
        row = await conn.fetchrow(
            "SELECT balance_jpy, overdraft_jpy FROM accounts WHERE account_id = $1", account
        )
    lot = f"lot:open-{unique}"
    assert [(e["kind"], e["amount_jpy"], e["balance_after_jpy"]) for e in entries] == [
        ("grant", 300, 300),
        ("charge", -50, 250),
        ("forfeit", -250, 0),
    ]
    assert entries[1]["allocations"] == [{"lot_id": lot, "amount_jpy": 50}]
    assert row is not None
    assert (row["balance_jpy"], row["overdraft_jpy"]) == (0, 0)
