"""Long ids, out-of-range timestamps and huge bad records keep billing going (SPEC §2-§4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.integration.kit import (
    ago,
    create_topics,
    database,
    opened,
    produce,
    produce_positions,
    purchased,
    read_topic,
    usage,
    wait_applied,
    wait_until,
)
from worker.app import Worker
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def worker_task(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """A worker whose task the test can watch (it must not die on bad input)."""
    worker = Worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.run())

    async def joined() -> bool:
        if task.done():
            task.result()
        s = worker.stream
        return s is not None and s.consumer is not None and bool(s.consumer.assignment())

    await wait_until(joined, 30, "the worker to join")
    try:
        yield task
    finally:
        worker.stop.set()
        await asyncio.gather(asyncio.wait_for(task, 60), return_exceptions=True)


def _alive(task: asyncio.Task[None]) -> str:
    if not task.done():
        return "alive"
    return f"died: {task.exception()!r}"


async def test_a_usage_event_with_a_128_char_event_id_that_depletes_the_balance_is_charged(
    settings: Settings, unique: str
) -> None:
    # SPEC §3: event_id is 1..128 chars. Its balance_depleted reminder id is
    # "<account>:balance_depleted:charge:<event_id>", longer than the Reminder schema's 128.
    account = f"acc-{unique}"
    long_id = f"u-{unique}-" + "x" * (128 - len(f"u-{unique}-"))
    other = f"other-{unique}"
    await create_topics(settings)
    async with worker_task(settings) as task, database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(hours=2), test_credits=10),
                opened(f"open2-{unique}", other, ago(hours=2), test_credits=100),
            ],
        )
        await produce(settings, settings.topic_usage, [usage(long_id, account, ago(hours=1))])
        await produce(settings, settings.topic_usage, [usage(f"m-{unique}", other, ago(hours=1))])
        await wait_applied(conn, [f"m-{unique}"])
        # the long one is either applied or dead-lettered: wait for whichever it is
        await wait_until(
            lambda: _applied_or_dead_lettered(task, conn, long_id, account, settings.topic_dlq),
            30,
            "the 128-char event to be applied or dead-lettered",
        )
        applied = await conn.fetchval(
            "SELECT count(*) FROM applied_events WHERE event_id = $1", long_id
        )
        dead = await conn.fetch(
            "SELECT payload FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = $2",
            account,
            settings.topic_dlq,
        )
        assert _alive(task) == "alive"
    reasons = [orjson.loads(r["payload"])["reason"][:160] for r in dead]
    assert reasons == [], f"charge dead-lettered: {reasons}"
    assert applied == 1


async def test_the_expiry_sweep_survives_a_purchase_with_a_128_char_event_id(
    settings: Settings, unique: str
) -> None:
    # lot_id = "lot:<event_id>" (132 chars) breaks Reminder.lot_id (max 128) when the
    # credits_expiring notice is built; the sweeper task raises and takes the worker down.
    account = f"acc-{unique}"
    long_id = f"p-{unique}-" + "y" * (128 - len(f"p-{unique}-"))
    await create_topics(settings)
    async with worker_task(settings) as task, database(settings) as conn:
        await produce(
            settings,
            settings.topic_account_events,
            [
                opened(f"open-{unique}", account, ago(days=86), test_credits=0),
                {**purchased(long_id, account, ago(days=85), 1000), "purchase_id": "p-1"},
            ],
        )
        await wait_applied(conn, [long_id])

        async def noticed_or_dead() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = $2",
                account,
                settings.topic_reminders,
            )
            return bool(n) or task.done()

        await wait_until(noticed_or_dead, 30, "the credits_expiring notice (or a crash)")
        status = _alive(task)
        notices = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8') AND topic = $2",
            account,
            settings.topic_reminders,
        )
        # Defuse the lot, or every later worker of this session's database dies the same way.
        await conn.execute(
            "UPDATE lots SET expiring_notified = true, forfeited = true WHERE account_id = $1",
            account,
        )
    assert status == "alive"
    assert notices == 1  # one credits_expiring for the lot


async def test_a_usage_event_with_a_timestamp_out_of_utc_range_is_dead_lettered_and_the_rest_flows(
    settings: Settings, unique: str
) -> None:
    # RFC 3339 with offset, accepted by the regex; astimezone(UTC) raises OverflowError,
    # which pydantic does not turn into a ValidationError: the decoder raises in _fetch.
    bad: dict[str, Any] = usage(f"bad-{unique}", f"acc-{unique}", ago(hours=1))
    bad["occurred_at"] = "9999-12-31T23:59:59-01:00"
    good_account = f"good-{unique}"
    await create_topics(settings)
    async with worker_task(settings) as task, database(settings) as conn:
        [(partition, offset)] = await produce_positions(settings, settings.topic_usage, [bad])
        await produce(
            settings, settings.topic_usage, [usage(f"g-{unique}", good_account, ago(hours=1))]
        )
        await wait_until(
            lambda: _processed_or_dead(task, conn, f"g-{unique}"), 30, "the good event or a crash"
        )
        status = _alive(task)
        applied = await conn.fetchval(
            "SELECT count(*) FROM applied_events WHERE event_id = $1", f"g-{unique}"
        )
        letter = await wait_until(
            lambda: _dead_letter_at(conn, settings.topic_usage, partition, offset),
            30,
            "the dead letter of the out-of-range record",
        )
        bad_applied = await conn.fetchval(
            "SELECT count(*) FROM applied_events WHERE event_id = $1", f"bad-{unique}"
        )
    assert status == "alive"
    assert applied == 1
    assert bad_applied == 0
    assert letter["source_topic"] == settings.topic_usage
    assert (letter["source_partition"], letter["source_offset"]) == (partition, offset)
    assert letter["error_code"] in {"schema_violation", "implausible_time"}


async def _dead_letter_at(
    conn: Any, topic: str, partition: int, offset: int
) -> dict[str, Any] | None:
    payload = await conn.fetchval(
        "SELECT payload FROM outbox WHERE message_id = $1", f"dlq:{topic}:{partition}:{offset}"
    )
    return None if payload is None else dict(orjson.loads(payload))


async def _applied_or_dead_lettered(
    task: asyncio.Task[None], conn: Any, event_id: str, key: str, dlq: str
) -> bool:
    if task.done():
        return True
    n = await conn.fetchval(
        "SELECT (SELECT count(*) FROM applied_events WHERE event_id = $1)"
        " + (SELECT count(*) FROM outbox WHERE key = convert_to($2, 'UTF8') AND topic = $3)",
        event_id,
        key,
        dlq,
    )
    return bool(n)


async def _processed_or_dead(task: asyncio.Task[None], conn: Any, event_id: str) -> bool:
    if task.done():
        return True
    n = await conn.fetchval("SELECT count(*) FROM applied_events WHERE event_id = $1", event_id)
    return bool(n)


async def test_a_large_bad_record_does_not_stop_the_relay_publishing_reminders(
    settings: Settings, unique: str
) -> None:
    # A 500 kB record that is not JSON is accepted by the broker (1 MB limit); its dead letter
    # carries it twice (text + base64), > 1 MB, and the relay's send fails non-retriably.
    account = f"acc-{unique}"
    await create_topics(settings)
    async with worker_task(settings) as task, database(settings) as conn:
        [(partition, offset)] = await produce_positions(
            settings, settings.topic_usage, [b"x" * 500_000], key=account
        )
        await produce(
            settings,
            settings.topic_account_events,
            [opened(f"open-{unique}", account, ago(hours=2), test_credits=10)],
        )
        await produce(settings, settings.topic_usage, [usage(f"u-{unique}", account, ago(hours=1))])
        await wait_until(
            lambda: _processed_or_dead(task, conn, f"u-{unique}"), 30, "the usage or a crash"
        )
        letter = await wait_until(
            lambda: _dead_letter_at(conn, settings.topic_usage, partition, offset),
            30,
            "the dead letter of the large record",
        )
        # the relay got past the oversized dead letter: the reminder after it is on the topic
        reminders = await wait_until(
            lambda: _reminders_for(settings, account, task),
            60,
            "the balance_depleted reminder on the topic (or a crash)",
        )
        status = _alive(task)
        # Defuse the oversized dead letter, or every later relay of this session stops on it.
        await conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE topic = $1 AND length(payload) > 1000000",
            settings.topic_dlq,
        )
    assert status == "alive"
    assert letter["error_code"] == "malformed_json"
    assert [m["kind"] for m in reminders] == ["balance_depleted"]


async def _reminders_for(
    settings: Settings, account: str, task: asyncio.Task[None]
) -> list[dict[str, Any]] | bool:
    if task.done():
        return True
    found = await read_topic(settings, settings.topic_reminders, settle_s=0.2)
    return [m for m in found if m.get("account_id") == account]
