"""A usage event is recorded by its charge entry (migration 0011): every path writes one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.fake_store import FakeStore
from tests.unit.test_billing import apply, at, charge, decoded, opened, purchase
from worker.domain.commands import ConfigureReminder, SwitchToPostpay
from worker.domain.events import Effects, LedgerEntry
from worker.service.ports import CHARGE_PREFIX, Changes, UnrecordedUsage


def charge_ids(store: FakeStore) -> list[str]:
    return [e.entry_id for e in store.db.ledger if e.kind == "charge"]


async def test_a_charge_paid_from_a_lot_is_recorded_by_its_entry() -> None:
    store = FakeStore()
    await apply(store, decoded(0, opened()), decoded(0, charge("u1", 10, 2)))
    assert charge_ids(store) == ["charge:u1"]
    assert store.db.processed[("usage", "u1")] == b"u1"


async def test_usage_of_an_account_never_opened_goes_to_overdraft_and_is_recorded() -> None:
    store = FakeStore()
    await apply(store, decoded(0, charge("u1", 10, 1, account="acc-1")))
    assert charge_ids(store) == ["charge:u1"]
    assert store.db.accounts["acc-1"].overdraft_jpy == 10


async def test_a_free_message_still_writes_its_charge_entry() -> None:
    # The rate table may price a destination at 0 (only negative prices are refused).
    store = FakeStore()
    free = charge("u1", 0, 3)
    await apply(store, decoded(0, opened()), decoded(0, free))
    (entry,) = [e for e in store.db.ledger if e.kind == "charge"]
    assert (entry.entry_id, entry.amount_jpy) == ("charge:u1", 0)


async def test_postpay_usage_is_recorded_by_its_entry_too() -> None:
    store = FakeStore()
    switch = SwitchToPostpay("s1", "acc-1", at(1), "contract-1")
    # u0 occurred before the switch (prepay rules), u1 after it (postpay): both recorded.
    before = replace(charge("u0", 10, 1), occurred_at=at(0.5))
    await apply(
        store,
        decoded(0, opened()),
        decoded(0, before),
        decoded(1, switch),
        decoded(1, charge("u1", 10, 20)),
    )
    assert charge_ids(store) == ["charge:u0", "charge:u1"]
    assert [c.event_id for c in store.db.postpay.values()] == ["u1"]


async def test_after_a_purchase_and_with_expired_lots_every_charge_is_recorded() -> None:
    store = FakeStore()
    # Long after the test credits and the purchase expired (90 days): all overdraft.
    late = replace(charge("u2", 10, 1), occurred_at=at(24 * 200))
    await apply(
        store,
        decoded(0, opened()),
        decoded(1, purchase(1000)),
        decoded(0, charge("u1", 10, 1)),
        decoded(1, late),
    )
    assert sorted(charge_ids(store)) == ["charge:u1", "charge:u2"]


def test_an_applied_usage_event_without_its_charge_entry_is_refused() -> None:
    usage = decoded(0, charge("u1", 10, 1))
    changes = Changes(processed=[usage])
    with pytest.raises(UnrecordedUsage, match="charge:u1"):
        changes.usage_by_charge()


def test_a_charge_entry_of_another_event_does_not_record_it() -> None:
    usage = decoded(0, charge("u1", 10, 1))
    other = LedgerEntry("charge:u2", "acc-1", "charge", -10, -10, at(2), "u2")
    with pytest.raises(UnrecordedUsage):
        Changes(processed=[usage], effects=Effects(ledger=[other])).usage_by_charge()


def test_account_events_need_no_ledger_entry() -> None:
    configure = ConfigureReminder("r1", "acc-1", at(1), True, 500, "ops@example.jp")
    assert Changes(processed=[decoded(0, configure)]).usage_by_charge() == {}


def test_usage_is_found_by_the_id_the_domain_gives_its_charge() -> None:
    usage = decoded(0, charge("u1", 10, 1))
    entry = LedgerEntry("charge:u1", "acc-1", "charge", -10, -10, at(2), "u1")
    found = Changes(processed=[usage], effects=Effects(ledger=[entry])).usage_by_charge()
    assert found == {"charge:u1": usage}
    assert CHARGE_PREFIX + "u1" == "charge:u1"
