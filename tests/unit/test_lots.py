"""Debiting credit lots: soonest expiry first, splitting, expiry by event time, overdraft."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import T0, Book, at
from worker.domain.lots import Lot, debit, debit_order, forfeit, new_lot, notice_passed


def lot(lot_id: str, amount: int, granted_at: datetime, expires_at: datetime) -> Lot:
    return Lot(lot_id, amount, granted_at, expires_at, "purchase")


def test_new_lot_expires_after_its_validity_with_all_credit_remaining() -> None:
    fresh = new_lot("lot:a", 1_000, T0, timedelta(days=90), "purchase")
    assert fresh.expires_at == T0 + timedelta(days=90)
    assert (fresh.lot_id, fresh.amount_jpy, fresh.granted_at) == ("lot:a", 1_000, T0)
    assert fresh.source == "purchase"
    assert (fresh.remaining_jpy, fresh.consumed_jpy, fresh.forfeited_jpy) == (1_000, 0, 0)


def test_prefers_lots_that_expire_sooner() -> None:
    late = lot("a", 100, at(0), at(90))
    soon = lot("b", 100, at(1), at(30))
    middle = lot("c", 100, at(2), at(60))

    allocations, uncovered = debit([late, soon, middle], 250, at(3))

    assert allocations == [("b", 100), ("c", 100), ("a", 50)]
    assert uncovered == 0
    assert (soon.remaining_jpy, middle.remaining_jpy, late.remaining_jpy) == (0, 0, 50)


def test_same_expiry_prefers_the_older_grant_then_the_lower_lot_id() -> None:
    newer = lot("a", 10, at(2), at(90))
    older = lot("z", 10, at(1), at(90))
    twin_b = lot("b", 10, at(2), at(90))

    assert [x.lot_id for x in debit_order([newer, twin_b, older], at(3))] == ["z", "a", "b"]


def test_one_charge_spanning_two_lots_records_both_allocations() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=100)
    purchase = book.purchase(1_000, at(1))

    charge = book.charge(150, at(2))

    entry = book.entry(f"charge:{charge}")
    assert entry.amount_jpy == -150
    assert entry.allocations == (("lot:e1", 100), (f"lot:{purchase}", 50))
    assert entry.balance_after_jpy == book.account.balance_jpy == 950


def test_lot_expired_at_the_events_time_is_not_used() -> None:
    expiring = lot("a", 100, at(0), at(10))
    later = lot("b", 100, at(0), at(20))

    allocations, _ = debit([expiring, later], 30, at(10))

    assert allocations == [("b", 30)]
    assert expiring.remaining_jpy == 100


def test_lot_still_pays_for_usage_that_happened_before_it_expired() -> None:
    expiring = lot("a", 100, at(0), at(10))

    allocations, _ = debit([expiring], 30, at(10) - timedelta(seconds=1))

    assert allocations == [("a", 30)]


def test_usage_the_lots_cannot_cover_becomes_overdraft() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=100)

    charge = book.charge(130, at(1))

    assert book.account.overdraft_jpy == 30
    assert book.account.balance_jpy == -30
    assert book.entry(f"charge:{charge}").allocations == (("lot:e1", 100),)


def test_usage_after_every_lot_expired_is_all_overdraft() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=100)

    charge = book.charge(40, at(90))

    assert book.account.overdraft_jpy == 40
    assert book.entry(f"charge:{charge}").allocations == ()


def test_next_grant_repays_overdraft_first() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.charge(300, at(1))

    purchase = book.purchase(1_000, at(2))

    new = book.account.lots[-1]
    assert book.account.overdraft_jpy == 0
    assert (new.remaining_jpy, new.consumed_jpy) == (700, 300)
    entry = book.entry(f"grant:{purchase}")
    assert entry.amount_jpy == 1_000
    assert entry.allocations == ((f"lot:{purchase}", 300),)
    assert entry.balance_after_jpy == book.account.balance_jpy == 700


def test_grant_smaller_than_the_overdraft_repays_what_it_can() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.charge(1_500, at(1))

    book.purchase(1_000, at(2))

    assert book.account.overdraft_jpy == 500
    assert book.account.lots[-1].remaining_jpy == 0
    assert book.account.balance_jpy == -500


lots_strategy = st.lists(
    st.tuples(st.integers(0, 500), st.integers(0, 5), st.integers(1, 5)), max_size=6
)


@settings(max_examples=200, deadline=None)
@given(specs=lots_strategy, amount=st.integers(0, 3_000), when=st.integers(0, 6))
def test_debit_takes_exactly_the_amount_in_soonest_expiry_order(
    specs: list[tuple[int, int, int]], amount: int, when: int
) -> None:
    lots = [
        lot(f"l{i}", size, at(granted), at(granted + life))
        for i, (size, granted, life) in enumerate(specs)
    ]
    before = {x.lot_id: x.remaining_jpy for x in lots}
    # the expected split, worked out here: unexpired lots with credit, soonest expiry first,
    # then oldest grant, then lot id; each gives what it has until the amount is covered
    usable = [
        (g + life, g, f"l{i}", size) for i, (size, g, life) in enumerate(specs) if when < g + life
    ]
    expected, left = [], amount
    for _, _, lot_id, size in sorted(usable):
        if left and size:
            expected.append((lot_id, min(left, size)))
            left -= min(left, size)

    allocations, uncovered = debit(lots, amount, at(when))

    assert allocations == expected
    assert uncovered == left
    for x in lots:
        taken = sum(t for lot_id, t in allocations if lot_id == x.lot_id)
        assert x.remaining_jpy == before[x.lot_id] - taken


def test_forfeiting_marks_the_lot_changed_so_the_store_writes_it() -> None:
    spent = lot("a", 300, at(0), at(1))
    spent.dirty = False

    assert forfeit(spent) == 300

    assert spent.dirty is True
    assert (spent.remaining_jpy, spent.forfeited_jpy, spent.forfeited) == (0, 300, True)


NOTICE = timedelta(days=7)


def test_the_expiring_notice_is_due_exactly_seven_days_before_expiry() -> None:
    x = lot("a", 1, at(0), at(90))  # even JPY 1 left is worth a notice
    assert notice_passed(x, at(83), NOTICE, inclusive=True)
    assert not notice_passed(x, at(83), NOTICE, inclusive=False)
    assert not notice_passed(x, at(83) - timedelta(microseconds=1), NOTICE, inclusive=True)
