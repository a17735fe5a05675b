"""Postpay accounts and month-end invoices through the real broker and database.

Month closes are global to the session's database, so every test here closes months of its
own (2026-01 … 2026-06) that no other test uses.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.integration.kit import (
    create_topics,
    produce,
    read_topic,
    run_cli,
    running_worker,
    wait_until,
)
from worker.config import Settings
from worker.domain.invoicing import period_bounds, period_of, previous_period
from worker.entrypoints.month_close import close_by_hand, due_period

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def postpay_settings(settings: Settings) -> Settings:
    # Lots granted in early 2026 have expired by now; a long lateness keeps the expiry sweep
    # from forfeiting them while these tests run, so what they cover is deterministic.
    return settings.model_copy(update={"lateness_allowance_s": 400 * 86400})


def opened(account: str, at: str, credits: int = 0) -> dict[str, Any]:
    return {
        "type": "account_opened",
        "event_id": f"open-{account}",
        "account_id": account,
        "occurred_at": at,
        "test_credits": credits,
    }


def switched(account: str, at: str) -> dict[str, Any]:
    return {
        "type": "switched_to_postpay",
        "event_id": f"post-{account}",
        "account_id": account,
        "occurred_at": at,
        "contract_id": f"C-{account}",
    }


def sms(
    event_id: str, account: str, at: str, destination: str = "+819012345678", segments: int = 1
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "account_id": account,
        "occurred_at": at,
        "destination": destination,
        "segments": segments,
    }


def paid(event_id: str, account: str, invoice_id: str, amount: int) -> dict[str, Any]:
    return {
        "type": "invoice_paid",
        "event_id": event_id,
        "account_id": account,
        "occurred_at": "2026-11-20T10:00:00+09:00",
        "invoice_id": invoice_id,
        "amount": amount,
    }


async def applied(settings: Settings, count: int) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:

        async def done() -> bool:
            # Account events of this test's topic, and the charges (usage since migration
            # 0011 is recorded by its charge entry) of the accounts they opened.
            n = await conn.fetchval(
                "SELECT (SELECT count(*) FROM processed_events WHERE topic = $1)"
                " + (SELECT count(*) FROM ledger_entries WHERE kind = 'charge' AND account_id IN"
                " (SELECT account_id FROM processed_events WHERE topic = $1))",
                settings.topic_account_events,
            )
            return bool(n >= count)

        await wait_until(done, what=f"{count} events applied")
    finally:
        await conn.close()


async def invoices_of(
    settings: Settings, accounts: set[str], at_least: int
) -> list[dict[str, Any]]:
    got = await read_topic(settings, settings.topic_invoices, at_least=at_least)
    return [i for i in got if i["account_id"] in accounts]


async def test_one_close_invoices_every_postpay_account(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings
    a, b, prepay = f"a-{unique}", f"b-{unique}", f"p-{unique}"
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [
            opened(a, "2026-01-01T09:00:00+09:00", credits=30),
            switched(a, "2026-01-01T09:00:00+09:00"),
            opened(b, "2026-01-01T09:00:00+09:00"),
            switched(b, "2026-01-01T09:00:00+09:00"),
            opened(prepay, "2026-01-01T09:00:00+09:00"),
        ],
    )
    await produce(
        s,
        s.topic_usage,
        [
            sms(f"a1-{unique}", a, "2026-01-10T12:00:00+09:00", segments=2),
            sms(f"a2-{unique}", a, "2026-01-11T12:00:00+09:00", "+12125550100", segments=1),
            sms(f"a3-{unique}", a, "2026-01-31T23:59:59+09:00", segments=3),
            # 00:00:00 JST on 1 February belongs to February, not to this invoice.
            sms(f"a4-{unique}", a, "2026-01-31T15:00:00Z", segments=5),
            sms(f"b1-{unique}", b, "2026-01-15T12:00:00+09:00", segments=1),
            sms(f"p1-{unique}", prepay, "2026-01-15T12:00:00+09:00", segments=1),
        ],
    )
    async with running_worker(s):
        await applied(s, 11)
        code, message = await close_by_hand(s, "2026-01", wait_s=30)
        assert code == 0, message
        invoices = await invoices_of(s, {a, b, prepay}, at_least=2)
    by_account = {i["account_id"]: i for i in invoices}
    assert set(by_account) == {a, b}
    inv_a = by_account[a]
    assert inv_a["invoice_id"] == f"INV-2026-01-{a}"
    assert inv_a["period"] == "2026-01"
    assert inv_a["due_date"] == "2026-02-28"
    assert inv_a["payment_method"] == "bank_deposit"
    assert inv_a["currency"] == "JPY"
    lines = [
        (ln["country"], ln["unit_price"], ln["quantity"], ln["amount"], ln["period"])
        for ln in inv_a["lines"]
    ]
    assert lines == [
        ("JP", 10, 5, 50, "2026-01"),
        ("US", 12, 1, 12, "2026-01"),
        (None, -30, 1, -30, "2026-01"),
    ]
    assert inv_a["total"] == 32
    assert by_account[b]["total"] == 10
    assert date.fromisoformat(by_account[b]["due_date"]) == date(2026, 2, 28)


async def test_late_usage_after_close_goes_on_the_next_invoice(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings
    a = f"late-{unique}"
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [opened(a, "2026-02-01T00:00:00+09:00"), switched(a, "2026-02-01T00:00:00+09:00")],
    )
    await produce(s, s.topic_usage, [sms(f"l1-{unique}", a, "2026-02-10T10:00:00+09:00")])
    async with running_worker(s):
        await applied(s, 3)
        assert (await close_by_hand(s, "2026-02", wait_s=30))[0] == 0
        await produce(
            s,
            s.topic_usage,
            [
                sms(f"l2-{unique}", a, "2026-02-20T10:00:00+09:00", segments=4),
                sms(f"l3-{unique}", a, "2026-03-05T10:00:00+09:00", segments=2),
            ],
        )
        await applied(s, 5)
        assert (await close_by_hand(s, "2026-03", wait_s=30))[0] == 0
        invoices = await invoices_of(s, {a}, at_least=2)
    by_period = {i["period"]: i for i in invoices}
    assert by_period["2026-02"]["total"] == 10
    march = by_period["2026-03"]
    assert [(ln["period"], ln["quantity"], ln["amount"]) for ln in march["lines"]] == [
        ("2026-02", 4, 40),
        ("2026-03", 2, 20),
    ]
    assert march["total"] == 60
    assert "2026-02" in march["lines"][0]["description"]


async def test_closing_twice_at_once_publishes_one_invoice_per_account(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings
    accounts = [f"dbl{n}-{unique}" for n in range(3)]
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [
            e
            for a in accounts
            for e in (
                opened(a, "2026-04-01T00:00:00+09:00"),
                switched(a, "2026-04-01T00:00:00+09:00"),
            )
        ],
    )
    await produce(
        s, s.topic_usage, [sms(f"u-{a}", a, "2026-04-02T10:00:00+09:00") for a in accounts]
    )
    async with running_worker(s):
        await applied(s, 9)
        results = await asyncio.gather(*(close_by_hand(s, "2026-04", wait_s=30) for _ in range(3)))
        assert all(code == 0 for code, _ in results)
        assert sum("already closed" in message for _, message in results) == 2
        code, out, err = await run_cli(s, "close-month", "2026-04")
        assert code == 0, err
        assert "already closed" in out + err
        invoices = await invoices_of(s, set(accounts), at_least=3)
    assert sorted(i["invoice_id"] for i in invoices) == sorted(f"INV-2026-04-{a}" for a in accounts)


async def test_switch_mid_month_uses_credit_first_then_goes_negative(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings
    a = f"mid-{unique}"
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [
            opened(a, "2026-05-01T00:00:00+09:00", credits=25),
            {
                "type": "reminder_configured",
                "event_id": f"rem-{unique}",
                "account_id": a,
                "occurred_at": "2026-05-01T00:00:00+09:00",
                "enabled": True,
                "threshold": 1000,
                "email": "finance@example.jp",
            },
            switched(a, "2026-05-15T00:00:00+09:00"),
        ],
    )
    await produce(
        s,
        s.topic_usage,
        [
            sms(f"m1-{unique}", a, "2026-05-10T10:00:00+09:00"),  # prepay: 25 -> 15
            sms(f"m2-{unique}", a, "2026-05-20T10:00:00+09:00", segments=4),  # 15 credit + 25 owed
        ],
    )
    async with running_worker(s):
        await applied(s, 5)
        assert (await close_by_hand(s, "2026-05", wait_s=30))[0] == 0
        invoices = await invoices_of(s, {a}, at_least=1)
        view = await _account_json(s, a)
    (invoice,) = invoices
    assert [(ln["country"], ln["quantity"], ln["amount"]) for ln in invoice["lines"]] == [
        ("JP", 4, 40),
        (None, 1, -15),
    ]
    assert invoice["total"] == 25
    assert view["plan"] == "postpay"
    assert view["balance"] == -25
    # Every reminder is written with the change that caused it, so once all five events are
    # applied the outbox holds the account's complete set: the lot's expiry notice (its moment,
    # in July, had passed when these records arrived: it goes out before the first of them that
    # follows it), the one at configuration time, and none for the charges after the switch.
    conn = await asyncpg.connect(s.database_url)
    try:
        rows = await conn.fetch(
            "SELECT message_id FROM outbox"
            " WHERE key = convert_to($1, 'UTF8') AND topic = $2 ORDER BY id",
            a,
            s.topic_reminders,
        )
    finally:
        await conn.close()
    ids = [r["message_id"] for r in rows]
    assert [i.split(":")[1] for i in ids] == ["credits_expiring", "low_balance"]
    assert ids[1] == f"{a}:low_balance:configure:rem-{unique}"

    async def relayed() -> list[str]:
        found = await read_topic(s, s.topic_reminders, settle_s=0.2)
        mine = [r["reminder_id"] for r in found if r["account_id"] == a]
        return mine if len(mine) >= len(ids) else []

    published = await wait_until(relayed, 30, "the reminders on the topic")
    assert sorted(published) == sorted(ids)


async def test_payments_settle_an_invoice_in_parts(postpay_settings: Settings, unique: str) -> None:
    s = postpay_settings
    a = f"pay-{unique}"
    invoice_id = f"INV-2026-06-{a}"
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [opened(a, "2026-06-01T00:00:00+09:00"), switched(a, "2026-06-01T00:00:00+09:00")],
    )
    await produce(
        s, s.topic_usage, [sms(f"p1-{unique}", a, "2026-06-03T10:00:00+09:00", segments=10)]
    )
    async with running_worker(s):
        await applied(s, 3)
        assert (await close_by_hand(s, "2026-06", wait_s=30))[0] == 0
        await produce(
            s,
            s.topic_account_events,
            [
                paid(f"pay1-{unique}", a, invoice_id, 60),
                paid(f"pay1-{unique}", a, invoice_id, 60),  # the same payment twice
                paid(f"pay2-{unique}", a, invoice_id, 50),  # more than the 40 outstanding
                paid(f"pay3-{unique}", a, "INV-2026-06-nobody", 10),
                paid(f"pay4-{unique}", a, invoice_id, 40),
            ],
        )
        dead = await read_topic(s, s.topic_dlq, at_least=2)
        await applied(s, 5)
        view = await _account_json(s, a)
        conn = await asyncpg.connect(s.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT total_jpy, paid_jpy FROM invoices WHERE invoice_id = $1", invoice_id
            )
        finally:
            await conn.close()
    assert sorted(d["error_code"] for d in dead) == ["overpayment", "unknown_invoice"]
    assert (row["total_jpy"], row["paid_jpy"]) == (100, 100)
    assert view["balance"] == 0
    assert view["postpay"]["unpaid"] == 0


async def test_account_shows_negative_balance_and_open_period_total(
    settings: Settings, unique: str
) -> None:
    a = f"open-{unique}"
    now = datetime.now(UTC)
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_account_events,
        [
            opened(a, (now - timedelta(seconds=2)).isoformat()),
            switched(a, (now - timedelta(seconds=2)).isoformat()),
        ],
    )
    await produce(
        settings,
        settings.topic_usage,
        [sms(f"o1-{unique}", a, (now - timedelta(seconds=1)).isoformat(), segments=3)],
    )
    async with running_worker(settings):
        await applied(settings, 3)
        view = await _account_json(settings, a)
    assert view["plan"] == "postpay"
    assert view["balance"] == -30
    assert view["postpay"]["open_period"] == period_of(now, settings.zone)
    assert view["postpay"]["open_period_total"] == 30


async def _account_json(settings: Settings, account: str) -> dict[str, Any]:
    code, out, err = await run_cli(settings, "account", account, "--json")
    assert code == 0, err
    view: dict[str, Any] = json.loads(out)
    return view


async def test_close_by_hand_publishes_when_no_worker_runs(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings
    a = f"hand-{unique}"
    await create_topics(s)
    await produce(
        s,
        s.topic_account_events,
        [opened(a, "2026-07-01T00:00:00+09:00"), switched(a, "2026-07-01T00:00:00+09:00")],
    )
    await produce(s, s.topic_usage, [sms(f"h1-{unique}", a, "2026-07-09T10:00:00+09:00")])
    async with running_worker(s):
        await applied(s, 3)
    code, message = await close_by_hand(s, "2026-07", wait_s=30)
    assert code == 0, message
    assert "published" in message
    (invoice,) = await invoices_of(s, {a}, at_least=1)
    assert (invoice["invoice_id"], invoice["total"]) == (f"INV-2026-07-{a}", 10)


async def test_timer_waits_for_the_backlog_before_closing(
    postpay_settings: Settings, unique: str
) -> None:
    """A worker restarted after an outage must not close the month while its backlog still
    holds that month's usage: every backlog event ends up on the one invoice."""
    s = postpay_settings.model_copy(update={"month_close_enabled": True, "batch_max_records": 20})
    period = due_period(datetime.now(UTC), s)
    start, _ = period_bounds(period, s.zone)
    a = f"timer-{unique}"
    await create_topics(s)
    await produce(
        s, s.topic_account_events, [opened(a, start.isoformat()), switched(a, start.isoformat())]
    )
    backlog = [
        sms(f"t{n}-{unique}", a, (start + timedelta(hours=n)).isoformat()) for n in range(300)
    ]
    await produce(s, s.topic_usage, backlog)
    async with running_worker(s):
        invoices = await invoices_of(s, {a}, at_least=1)
    (invoice,) = invoices
    assert invoice["period"] == period
    assert sum(ln["quantity"] for ln in invoice["lines"] if ln["country"]) == 300
    assert invoice["total"] == 3000


async def test_close_month_refuses_a_month_that_has_not_ended(settings: Settings) -> None:
    period = period_of(datetime.now(UTC) + timedelta(days=40), settings.zone)
    code, message = await close_by_hand(settings, period, wait_s=1)
    assert code == 1
    assert "has not ended" in message


async def test_timer_closes_months_missed_during_an_outage_each_on_its_own_invoice(
    postpay_settings: Settings, unique: str
) -> None:
    s = postpay_settings.model_copy(update={"month_close_enabled": True})
    due = due_period(datetime.now(UTC), s)
    missed = [previous_period(previous_period(due)), previous_period(due)]
    a = f"missed-{unique}"
    start, _ = period_bounds(missed[0], s.zone)
    await create_topics(s)
    await produce(
        s, s.topic_account_events, [opened(a, start.isoformat()), switched(a, start.isoformat())]
    )
    await produce(
        s,
        s.topic_usage,
        [
            sms(f"mo{n}-{unique}", a, (period_bounds(p, s.zone)[0] + timedelta(days=3)).isoformat())
            for n, p in enumerate(missed)
        ],
    )
    async with running_worker(s):
        invoices = await invoices_of(s, {a}, at_least=2)
    assert sorted((i["period"], i["total"]) for i in invoices) == [(p, 10) for p in missed]
