"""The balance feed and the forecasts in reminders: one snapshot per changed account and batch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import orjson

from tests.unit.fake_store import FakeEncoder, FakeStore
from worker.domain.account import Account, OpenInvoice, Policy
from worker.domain.balance import BalanceState, NextExpiry, balance_state, status_of
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PayInvoice,
    PurchaseCredits,
    SwitchToPostpay,
)
from worker.domain.events import Effects
from worker.domain.forecast import Forecast
from worker.domain.lots import Lot
from worker.domain.rating import Rated
from worker.service.billing import BatchReport, apply_batch, sweep_expiry
from worker.service.ports import Decoded, InputRecord, Source

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
POLICY = Policy()  # 100 JPY of test credits, lots valid 90 days, Asia/Tokyo
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def decoded(offset: int, command: Command) -> Decoded:
    source: Source = "usage" if isinstance(command, ChargeUsage) else "account"
    record = InputRecord(source, f"in.{source}", 0, offset, b"k", b"{}", 0)
    return Decoded(record, command, command.event_id.encode())


def charge(event_id: str, hours: float, amount: int, account: str = "acc-1") -> ChargeUsage:
    return ChargeUsage(event_id, account, at(hours), Rated("JP", amount, 1))


async def apply(store: FakeStore, *commands: Command) -> BatchReport:
    items = [decoded(n, c) for n, c in enumerate(commands)]
    return await apply_batch(store, items, POLICY, FakeEncoder(), NOW)


def snapshots(store: FakeStore) -> list[dict[str, object]]:
    return [orjson.loads(m.payload) for m in store.db.outbox if m.topic == "balances"]


def lot(lot_id: str, remaining: int, expires_at: datetime, forfeited: bool = False) -> Lot:
    return Lot(
        lot_id=lot_id,
        amount_jpy=1_000,
        granted_at=expires_at - timedelta(days=90),
        expires_at=expires_at,
        source="purchase",
        remaining_jpy=remaining,
        forfeited=forfeited,
    )


# --- status, credit, next expiry: pure


def test_status_ok_low_depleted_postpay() -> None:
    account = Account("a", lots=[lot("l", 500, T0)])
    assert status_of(account) == "ok"
    account.reminder_enabled, account.reminder_threshold_jpy = True, 500
    assert status_of(account) == "low"  # at the threshold counts as low
    account.reminder_threshold_jpy = 499
    assert status_of(account) == "ok"
    account.overdraft_jpy = 500
    assert status_of(account) == "depleted"  # balance 0
    account.plan = "postpay"
    assert status_of(account) == "postpay"


def test_low_needs_the_reminder_enabled() -> None:
    account = Account("a", lots=[lot("l", 100, T0)], reminder_threshold_jpy=1_000)
    assert status_of(account) == "ok"


def test_credit_and_next_expiry_count_open_lots_only() -> None:
    account = Account(
        "a",
        overdraft_jpy=0,
        lots=[
            lot("late", 300, T0 + timedelta(days=30)),
            lot("gone", 0, T0 - timedelta(days=1), forfeited=True),
            lot("empty", 0, T0 + timedelta(days=1)),
            lot("soon", 200, T0 + timedelta(days=2)),
        ],
        version=7,
        as_of=T0,
    )
    state = balance_state(account)
    assert state.credit_jpy == 500
    assert state.balance_jpy == 500
    assert state.next_expiry == NextExpiry(T0 + timedelta(days=2), 200)
    assert (state.version, state.as_of) == (7, T0)


def test_no_lot_with_credit_means_no_next_expiry() -> None:
    state = balance_state(Account("a", overdraft_jpy=40))
    assert state.next_expiry is None
    assert (state.credit_jpy, state.balance_jpy, state.status) == (0, -40, "depleted")


# --- the feed through apply_batch


async def test_one_snapshot_per_account_per_batch_with_its_state_after_the_batch() -> None:
    store = FakeStore()
    await apply(
        store,
        OpenAccount("o1", "acc-1", at(0), None),
        PurchaseCredits("p1", "acc-1", at(1), "buy", 1_000, "credit_card"),
        charge("u1", 2, 30),
        charge("u2", 3, 20),
        OpenAccount("o2", "acc-2", at(0), None),
    )
    by_account = {s["account_id"]: s for s in snapshots(store)}
    assert len(snapshots(store)) == 2
    one = by_account["acc-1"]
    assert (one["balance_jpy"], one["credit_jpy"], one["version"]) == (1_050, 1_050, 4)
    assert one["as_of"] == at(3).isoformat()
    assert one["next_expiry"] == {
        "expires_at": (at(0) + timedelta(days=90)).isoformat(),
        "amount_jpy": 50,  # the test credits' lot, 100 - 30 - 20
    }
    assert one["status"] == "ok"
    assert [m.message_id for m in store.db.outbox if m.topic == "balances"] == [
        "acc-1:balance:4",
        "acc-2:balance:1",
    ]


async def test_versions_keep_rising_across_batches_and_unchanged_accounts_send_nothing() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None), OpenAccount("o2", "b", at(0), None))
    await apply(store, charge("u1", 1, 10))
    await apply(store, charge("u1", 1, 10))  # a redelivery changes nothing
    assert [m.message_id for m in store.db.outbox] == [
        "acc-1:balance:1",
        "b:balance:1",
        "acc-1:balance:2",
    ]
    assert store.db.accounts["acc-1"].version == 2


async def test_a_dead_lettered_event_is_no_change() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None))
    await apply(store, PurchaseCredits("p1", "acc-1", at(1), "buy", 1_500, "credit_card"))
    assert [m.topic for m in store.db.outbox] == ["balances", "dlq"]


async def test_postpay_switch_and_reminder_setting_publish_their_status() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None))
    await apply(store, ConfigureReminder("c1", "acc-1", at(1), True, 100, "a@example.com"))
    await apply(store, SwitchToPostpay("s1", "acc-1", at(2), "K-1"))
    assert [s["status"] for s in snapshots(store)] == ["ok", "low", "postpay"]
    assert [s["version"] for s in snapshots(store)] == [1, 2, 3]


async def test_an_expiry_forfeit_publishes_the_balance_as_of_the_lot_expiry() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None))
    expires = at(0) + timedelta(days=90)
    assert await sweep_expiry(store, expires + timedelta(hours=2), POLICY, FakeEncoder()) == 1
    last = snapshots(store)[-1]
    assert (last["balance_jpy"], last["credit_jpy"], last["next_expiry"]) == (0, 0, None)
    assert (last["version"], last["as_of"]) == (2, expires.isoformat())
    assert last["status"] == "depleted"


async def test_an_expiry_notice_alone_is_no_change() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None))
    notice_time = at(0) + timedelta(days=85)
    assert await sweep_expiry(store, notice_time, POLICY, FakeEncoder()) == 1
    assert [m.topic for m in store.db.outbox] == ["balances", "reminders"]


# --- usage buckets and forecasts


async def test_charges_grow_daily_buckets_by_business_date() -> None:
    store = FakeStore()
    await apply(
        store,
        charge("u1", 0, 10),  # 2026-11-20 12:00 Tokyo
        charge("u2", 11, 20),  # 2026-11-20 23:00 Tokyo
        charge("u3", 12, 40),  # 2026-11-21 00:00 Tokyo
    )
    await apply(store, charge("u4", 13, 5))
    assert store.db.usage == {("acc-1", date(2026, 11, 20)): 30, ("acc-1", date(2026, 11, 21)): 45}


async def test_only_the_days_the_window_needs_are_loaded() -> None:
    store = FakeStore()
    await apply(store, OpenAccount("o1", "acc-1", at(0), None))
    store.db.usage_loads.clear()
    await apply(store, charge("u1", 24, 10), charge("u2", 48, 10))
    # The earliest event is 2026-11-21 in Tokyo: its window starts 6 days before.
    assert store.db.usage_loads == [{"acc-1": date(2026, 11, 15)}]


async def test_a_reminder_forecast_counts_charges_of_earlier_batches() -> None:
    store = FakeStore()
    await apply(
        store,
        OpenAccount("o1", "acc-1", at(0), 0),
        PurchaseCredits("p1", "acc-1", at(0), "buy", 1_000, "credit_card"),
        ConfigureReminder("c1", "acc-1", at(0), True, 500, "a@example.com"),
    )
    await apply(store, charge("u1", 72, 490))  # 2026-11-23 in Tokyo; balance 510
    await apply(store, charge("u2", 144, 210))  # 2026-11-26; balance 300: crosses 500
    (sent,) = [orjson.loads(m.payload) for m in store.db.outbox if m.topic == "reminders"]
    assert sent["reminder_id"] == "acc-1:low_balance:charge:u2"
    # 490 + 210 over 11-20..11-26: 100 a day; 300 left lasts 3 days from 11-26 12:00 Tokyo.
    assert sent["forecast"] == {
        "usage_jpy_per_day": 100,
        "runs_out_on": "2026-11-29",
        "expiring_unused_jpy": 0,
        "suggested_package_jpy": 9_000,
    }


def test_forecast_is_attached_to_low_balance_depleted_and_expiring_only() -> None:
    account = Account(
        "a",
        reminder_enabled=True,
        reminder_threshold_jpy=500,
        reminder_email="a@example.com",
        lots=[lot("l", 600, T0 + timedelta(days=60))],
        usage_by_day={date(2026, 11, 20): 700},
    )
    effects = Effects()
    account.apply(ChargeUsage("u1", "a", at(1), Rated("JP", 700, 1)), POLICY, effects)
    kinds = {r.kind: r.forecast for r in effects.reminders}
    assert set(kinds) == {"low_balance", "balance_depleted"}
    # 700 + 700 JPY on 2026-11-20 in Tokyo: 200 a day; balance -100: no run-out date.
    expected = Forecast(200, None, 0, 18_000)
    assert kinds == {"low_balance": expected, "balance_depleted": expected}


async def test_a_payment_publishes_the_lower_postpay_due() -> None:
    store = FakeStore()
    await apply(
        store, OpenAccount("o1", "acc-1", at(0), 0), SwitchToPostpay("s1", "acc-1", at(1), "K")
    )
    await apply(store, charge("u1", 2, 300))
    store.db.accounts["acc-1"].invoices["INV-1"] = OpenInvoice("INV-1", 300)
    await apply(store, PayInvoice("pay1", "acc-1", at(3), "INV-1", 200))
    last = snapshots(store)[-1]
    assert (last["postpay_due_jpy"], last["balance_jpy"], last["status"]) == (100, -100, "postpay")
    assert (last["version"], last["as_of"]) == (4, at(3).isoformat())


def test_the_snapshot_carries_every_field_by_hand() -> None:
    """A balance of JPY 1 is not depleted, and a lot with JPY 1 left is the next expiry."""
    account = Account(
        "a",
        overdraft_jpy=0,
        lots=[lot("one", 1, T0 + timedelta(days=3))],
        version=2,
        as_of=T0,
    )
    assert balance_state(account) == BalanceState(
        account_id="a",
        plan="prepay",
        balance_jpy=1,
        overdraft_jpy=0,
        postpay_due_jpy=0,
        credit_jpy=1,
        next_expiry=NextExpiry(T0 + timedelta(days=3), 1),
        status="ok",
        version=2,
        as_of=T0,
    )
    account.lots = []
    account.overdraft_jpy, account.postpay_due_jpy = 30, 0
    state = balance_state(account)
    assert (state.overdraft_jpy, state.balance_jpy, state.status) == (30, -30, "depleted")
