"""apply_batch and sweep_expiry against the in-memory store: no database, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.fake_store import FakeEncoder, FakeStore
from worker.domain.account import Policy
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PurchaseCredits,
)
from worker.domain.rating import Rated
from worker.service.billing import BatchReport, apply_batch, sweep_expiry
from worker.service.ports import Dead, Decoded, InputRecord, OutboxMessage, Source

T0 = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
POLICY = Policy()  # 100 JPY of test credits on open, lots valid 90 days
NOW = datetime(2026, 1, 6, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def record(source: Source, offset: int) -> InputRecord:
    return InputRecord(source, f"in.{source}", 0, offset, b"acc-1", b"{}", 0)


def decoded(offset: int, command: Command, fingerprint: bytes | None = None) -> Decoded:
    source: Source = "usage" if isinstance(command, ChargeUsage) else "account"
    return Decoded(record(source, offset), command, fingerprint or command.event_id.encode())


def opened(event_id: str = "o1", account: str = "acc-1") -> OpenAccount:
    return OpenAccount(event_id, account, at(0), None)


def purchase(amount: int, event_id: str = "p1", account: str = "acc-1") -> PurchaseCredits:
    return PurchaseCredits(event_id, account, at(1), f"buy-{event_id}", amount, "credit_card")


def charge(event_id: str, price: int, segments: int, account: str = "acc-1") -> ChargeUsage:
    return ChargeUsage(event_id, account, at(2), Rated("JP", price, segments))


async def apply(store: FakeStore, *items: Decoded | Dead) -> BatchReport:
    return await apply_batch(store, list(items), POLICY, FakeEncoder(), NOW)


def outputs(store: FakeStore) -> list[OutboxMessage]:
    """The outbox without the balance snapshots (tests/unit/test_balances.py covers those)."""
    return [m for m in store.db.outbox if m.topic != "balances"]


def balance(store: FakeStore, account: str = "acc-1") -> int:
    return store.db.accounts[account].balance_jpy


async def test_a_batch_is_applied_in_one_unit_of_work() -> None:
    store = FakeStore()
    # In the order the aligner releases them (event time across the topics); applied as given.
    report = await apply(
        store, decoded(0, opened()), decoded(1, purchase(1000)), decoded(0, charge("u1", 3, 2))
    )
    assert report.applied == {"account": 2, "usage": 1}
    assert report.dead == []
    assert report.implicit_accounts == 0
    assert balance(store) == 100 + 1000 - 6
    assert [e.amount_jpy for e in store.db.ledger] == [100, 1000, -6]
    assert store.units == 1


async def test_a_redelivered_batch_changes_nothing() -> None:
    store = FakeStore()
    batch = [decoded(0, opened()), decoded(1, purchase(1000)), decoded(0, charge("u1", 3, 2))]
    await apply(store, *batch)
    again = await apply(store, *batch)
    assert again.applied == {}
    assert again.duplicates == {"account": 2, "usage": 1}
    assert balance(store) == 1094
    assert len(store.db.ledger) == 3
    assert [m.message_id for m in store.db.outbox] == ["acc-1:balance:3"]  # the first time only


async def test_the_same_event_id_with_another_payload_is_dead_lettered() -> None:
    store = FakeStore()
    await apply(store, decoded(0, opened()), decoded(0, charge("u1", 3, 2), b"first"))
    report = await apply(store, decoded(1, charge("u1", 3, 5), b"second"))
    assert report.applied == {}
    assert [d.code for d in report.dead] == ["conflicting_duplicate"]
    assert balance(store) == 100 - 6
    assert [m.message_id for m in outputs(store)] == ["dlq:in.usage:0:1"]


async def test_a_rejected_event_is_dead_lettered_and_the_rest_applied() -> None:
    store = FakeStore()
    report = await apply(store, decoded(0, opened()), decoded(1, purchase(1500)))
    assert report.applied == {"account": 1}
    assert [(d.code, d.record.offset) for d in report.dead] == [("invalid_amount", 1)]
    assert balance(store) == 100
    assert [(m.topic, m.key) for m in outputs(store)] == [("dlq", "invalid_amount")]
    assert ("account", "p1") not in store.db.processed


async def test_records_that_did_not_decode_are_dead_lettered() -> None:
    store = FakeStore()
    report = await apply(store, Dead(record("usage", 7), "invalid_json", "not JSON"))
    assert report.applied == {}
    assert len(report.dead) == 1
    assert [m.message_id for m in store.db.outbox] == ["dlq:in.usage:0:7"]


async def test_usage_for_an_unknown_account_opens_an_implicit_one_once() -> None:
    store = FakeStore()
    first = await apply(store, decoded(0, charge("u1", 3, 2, account="ghost")))
    assert first.implicit_accounts == 1
    assert store.db.accounts["ghost"].opened is False
    assert balance(store, "ghost") == -6  # no test credits: it was never opened
    second = await apply(store, decoded(1, charge("u2", 3, 1, account="ghost")))
    assert second.implicit_accounts == 0
    assert balance(store, "ghost") == -9


async def test_an_account_opened_in_the_same_batch_is_not_implicit() -> None:
    store = FakeStore()
    report = await apply(
        store, decoded(0, opened(account="new")), decoded(0, charge("u1", 3, 2, account="new"))
    )
    assert report.implicit_accounts == 0
    assert balance(store, "new") == 94


async def test_crossing_the_threshold_queues_one_reminder() -> None:
    store = FakeStore()
    configure = ConfigureReminder("c1", "acc-1", at(1.5), True, 1050, "ops@example.com")
    report = await apply(
        store,
        decoded(0, opened()),
        decoded(1, purchase(1000)),
        decoded(2, configure),
        decoded(0, charge("u1", 30, 2)),
    )
    assert report.reminders == 1
    assert balance(store) == 1040
    assert [m.message_id for m in outputs(store)] == ["acc-1:low_balance:charge:u1"]


async def test_a_failed_unit_of_work_leaves_nothing_behind() -> None:
    class Broken(FakeEncoder):
        def dead_letter(self, dead: Dead, failed_at: datetime) -> object:  # type: ignore[override]
            raise OSError("encoder down")

    store = FakeStore()
    with pytest.raises(OSError, match="encoder down"):
        await apply_batch(
            store,
            [decoded(0, opened()), decoded(1, purchase(7))],
            POLICY,
            Broken(),
            NOW,
        )
    assert store.db.accounts == {}
    assert store.db.ledger == []
    assert store.db.processed == {}


async def test_the_sweep_forfeits_lots_past_validity_and_lateness() -> None:
    store = FakeStore()
    await apply(store, decoded(0, opened()), decoded(1, purchase(1000)))
    # Lots granted at T0 (100) and T0+1h (1000) expire 90 days later; lateness is 1 hour.
    assert await sweep_expiry(store, at(0) + timedelta(days=90, minutes=59), POLICY, FakeEncoder())
    assert balance(store) == 1100  # only announced so far
    assert await sweep_expiry(store, at(2) + timedelta(days=90), POLICY, FakeEncoder()) == 1
    assert balance(store) == 0
    assert await sweep_expiry(store, at(3) + timedelta(days=90), POLICY, FakeEncoder()) == 0
