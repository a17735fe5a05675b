"""kill -9 in the middle of a stream, restart, and compare every account with the reference model.

The worker runs as a real `billing-worker run` process. Events for ~50 accounts are
produced while it runs; it is SIGKILLed once some (never all) are applied, the rest is
produced while it is down, and a fresh process finishes the job. Whatever the crash tore,
every balance, overdraft and lot must be what applying each distinct event once gives.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from chaos import oracle
from tests.integration.kit import (
    CLI,
    ago,
    create_topics,
    database,
    opened,
    purchased,
    read_topic,
    settings_env,
    usage,
    wait_until,
)
from worker.adapters.kafka_connection import kafka_client_args
from worker.builders import policy_from, rates_from
from worker.config import Settings
from worker.domain.rating import rate_usage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNTS = 50
EVENTS = 3000
DESTINATIONS = [
    "+819012345678",
    "+819087654321",
    "+12025550123",
    "+821012345678",
    "+6591234567",
    "+639171234567",
]


@dataclass(frozen=True)
class Sent:
    topic: str
    source: str  # "account" | "usage", as the worker ranks ties
    seq: int
    event: dict[str, Any]


def scenario(settings: Settings, prefix: str, seed: str) -> list[Sent]:
    """Opens, purchases and usage in time order per account, with some redeliveries."""
    rnd = random.Random(seed)
    accounts = [f"{prefix}-{n:02d}" for n in range(ACCOUNTS)]
    base = ago(hours=20)
    out: list[Sent] = []

    def add(topic: str, source: str, event: dict[str, Any]) -> None:
        out.append(Sent(topic, source, len(out), event))

    for n, account in enumerate(accounts):
        if n % 10 != 9:  # every tenth account is never opened: implicit, in overdraft
            credits = rnd.choice([None, 0, 100, 300, 1000])
            add(
                settings.topic_account_events,
                "account",
                opened(f"{account}-open", account, base - timedelta(minutes=n), credits),
            )
    for i in range(EVENTS):
        account = rnd.choice(accounts)
        at = base + timedelta(seconds=10 * i)
        if rnd.random() < 0.07:
            amount = 1000 * rnd.randint(1, 3)
            add(
                settings.topic_account_events,
                "account",
                purchased(f"{account}-buy-{i}", account, at, amount),
            )
        else:
            extra = {"country": "JP"} if rnd.random() < 0.2 else {}
            add(
                settings.topic_usage,
                "usage",
                usage(
                    f"{account}-u-{i}",
                    account,
                    at,
                    rnd.randint(1, 4),
                    rnd.choice(DESTINATIONS),
                    **extra,
                ),
            )
        if i > 50 and rnd.random() < 0.03:  # at-least-once: an earlier one comes again
            again = rnd.choice(out[:-1])
            add(again.topic, again.source, again.event)
    return out


def to_event(settings: Settings, sent: Sent) -> oracle.Event:
    """The record as the reference model reads it; only the price comes from the rate table."""
    e = sent.event
    at = datetime.fromisoformat(e["occurred_at"])
    common = (sent.source, e["event_id"], e["account_id"], at, at)
    if sent.source == "usage":
        rated = rate_usage(
            rates_from(settings), e.get("country"), e["destination"], e["segments"], at
        )
        return oracle.Event(
            sent.source,
            "usage",
            *common[1:],
            amount_jpy=rated.unit_price_jpy * e["segments"],
            country=rated.country,
            unit_price_jpy=rated.unit_price_jpy,
            segments=e["segments"],
        )
    if e["type"] == "account_opened":
        return oracle.Event(
            sent.source, e["type"], *common[1:], test_credits_jpy=e.get("test_credits")
        )
    return oracle.Event(
        sent.source,
        e["type"],
        *common[1:],
        amount_jpy=e["amount"],
        payment_method=e["payment_method"],
    )


def model(settings: Settings, sent: list[Sent]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The reference model (chaos/oracle.py): each account's records in event-time order
    (ties: account events first, then production order); returns the accounts and the ids of
    every reminder they must produce."""
    policy = policy_from(settings)
    rules = oracle.Rules(
        test_credits_jpy=policy.test_credits_jpy,
        validity=policy.lot_validity,
        lateness=policy.lateness,
        expiring_notice=policy.expiring_notice,
    )
    rank = {"account": 0, "usage": 1}
    ordered = sorted(
        sent,
        key=lambda s: (
            s.event["account_id"],
            datetime.fromisoformat(s.event["occurred_at"]),
            rank[s.source],
            s.seq,
        ),
    )
    outcome = oracle.run([to_event(settings, s) for s in ordered], rules)
    assert not outcome.dead, outcome.dead
    out = {}
    for account_id, acct in outcome.accounts.items():
        out[account_id] = {
            "balance": oracle.balance(acct),
            "overdraft": acct.overdraft_jpy,
            "lots": {lot.lot_id: lot.remaining_jpy for lot in acct.lots},
            "entries": sum(1 for e in outcome.ledger if e.account_id == account_id),
        }
    return out, {r.reminder_id for r in outcome.reminders}


async def start_worker(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(CLI),
            "run",
            env=settings_env(settings, http_port="0", batch_max_records="200"),
            stdout=out,
            stderr=out,
        )


async def produce_paced(settings: Settings, items: list[Sent], chunk: int = 100) -> None:
    producer = AIOKafkaProducer(
        **kafka_client_args(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    await producer.start()
    try:
        for start in range(0, len(items), chunk):
            for s in items[start : start + chunk]:
                await producer.send(
                    s.topic, orjson.dumps(s.event), key=s.event["account_id"].encode()
                )
            await producer.flush()
            await asyncio.sleep(0.02)  # pacing the producer so the kill lands mid-stream
    finally:
        await producer.stop()


async def test_sigkill_mid_stream_then_restart_matches_the_model(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    prefix = f"e2e-{unique}"
    sent = scenario(settings, prefix, unique)
    distinct = len({(s.source, s.event["event_id"]) for s in sent})
    expected, expected_reminders = model(settings, sent)
    assert sum(1 for s in sent if s.source == "usage") > 2000
    assert len(sent) > distinct  # there are redeliveries
    cut = len(sent) * 2 // 3
    log = tmp_path / "worker.log"
    await create_topics(settings)

    async with database(settings) as conn:

        async def applied_count() -> int:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM applied_events WHERE account_id LIKE $1", prefix + "-%"
                )
            )

        async def at_least(n: int) -> bool:
            return await applied_count() >= n

        first = await start_worker(settings, log)
        try:
            producing = asyncio.create_task(produce_paced(settings, sent[:cut]))
            await wait_until(lambda: at_least(distinct // 4), 120, "a quarter to be applied")
            first.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
            await producing
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
        at_kill = await applied_count()
        assert distinct // 4 <= at_kill < distinct

        # The rest arrives while no worker runs; then a fresh process takes over.
        await produce_paced(settings, sent[cut:], chunk=500)
        second = await start_worker(settings, log)
        try:
            await wait_until(lambda: at_least(distinct), 150, "every event to be applied")
            # SIGTERM: finish the batch, commit, drain the outbox, exit 0.
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 60) == 0, log.read_text()[-3000:]
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()

        rows = await conn.fetch(
            "SELECT account_id, balance_jpy, overdraft_jpy FROM accounts WHERE account_id LIKE $1",
            prefix + "-%",
        )
        lots = await conn.fetch(
            "SELECT account_id, lot_id, remaining_jpy FROM lots WHERE account_id LIKE $1",
            prefix + "-%",
        )
        sums = await conn.fetch(
            "SELECT account_id, sum(amount_jpy) AS total, count(*) AS n FROM ledger_entries"
            " WHERE account_id LIKE $1 GROUP BY account_id",
            prefix + "-%",
        )
        dead = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1", settings.topic_dlq
        )
        outbox_reminders = await conn.fetch(
            "SELECT message_id, sent_at FROM outbox WHERE topic = $1 AND key LIKE $2",
            settings.topic_reminders,
            (prefix + "-%").encode(),  # keys are bytea: LIKE on bytes
        )
        assert await applied_count() == distinct

    actual: dict[str, dict[str, Any]] = {
        r["account_id"]: {
            "balance": r["balance_jpy"],
            "overdraft": r["overdraft_jpy"],
            "lots": {},
            "entries": 0,
        }
        for r in rows
    }
    for lot in lots:
        actual[lot["account_id"]]["lots"][lot["lot_id"]] = lot["remaining_jpy"]
    for s in sums:
        actual[s["account_id"]]["entries"] = s["n"]
        assert s["total"] == actual[s["account_id"]]["balance"], s["account_id"]
    assert set(actual) == set(expected)
    mismatched = {a: (actual[a], expected[a]) for a in expected if actual[a] != expected[a]}
    example = next(iter(mismatched.items()), None)
    assert not mismatched, f"{len(mismatched)} accounts differ from the model, e.g. {example}"
    assert dead == 0, "no valid event may be dead-lettered"

    # Every reminder the ledger produced reached the topic (a crash may repeat one; ids dedupe).
    assert all(r["sent_at"] is not None for r in outbox_reminders)
    published = Counter(
        m["reminder_id"]
        for m in await read_topic(
            settings, settings.topic_reminders, at_least=len(outbox_reminders)
        )
        if m["account_id"].startswith(prefix + "-")
    )
    assert {r["message_id"] for r in outbox_reminders} == expected_reminders
    assert set(published) == expected_reminders
