"""Debiting credit lots: soonest expiry first, splitting, expiry by event time, overdraft."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import POLICY, T0, Book, at, examples
from worker.domain.commands import ChargeUsage
from worker.domain.errors import Rejected
from worker.domain.expiry import before_arrival
from worker.domain.lots import Lot, debit, debit_order, forfeit, new_lot, notice_passed
from worker.domain.rating import Rated


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


@settings(max_examples=examples(200), deadline=None)
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


def test_an_empty_lot_gets_no_expiring_notice() -> None:
    assert not notice_passed(lot("e", 0, at(0), at(90)), at(85), NOTICE, inclusive=True)


# -- the place of expiry among records and timer ticks, by hand


def test_a_record_arriving_exactly_at_the_cutoff_is_paid_by_the_lot() -> None:
    """Lot `lot:e1` (JPY 1,000) expires on day 90; its cutoff is day 90 + 1 h (the lateness).
    A record that reached Kafka exactly then is in time: nothing is forfeited before it."""
    book = Book()
    book.open(T0, 1_000)
    cutoff = at(90) + timedelta(hours=1)
    usage = ChargeUsage(
        "u1", "acc-1", at(90) - timedelta(minutes=1), Rated("JP", 10, 10), arrived_at=cutoff
    )

    before_arrival(book.account, cutoff, POLICY, book.effects)
    book.apply(usage)

    assert [(e.entry_id, e.allocations) for e in book.effects.ledger] == [
        ("grant:e1", ()),
        ("charge:u1", (("lot:e1", 100),)),
    ]
    assert book.account.overdraft_jpy == 0


def test_a_record_arriving_just_after_the_cutoff_comes_after_the_forfeit() -> None:
    book = Book()
    book.open(T0, 1_000)
    late = at(90) + timedelta(hours=1, microseconds=1)
    usage = ChargeUsage(
        "u1", "acc-1", at(90) - timedelta(minutes=1), Rated("JP", 10, 10), arrived_at=late
    )

    before_arrival(book.account, late, POLICY, book.effects)
    book.apply(usage)

    assert [(e.entry_id, e.amount_jpy, e.allocations) for e in book.effects.ledger] == [
        ("grant:e1", 1_000, ()),
        ("forfeit:lot:e1", -1_000, ()),
        ("charge:u1", -100, ()),
    ]
    assert book.account.overdraft_jpy == 100


def test_the_timer_at_the_notice_moment_announces_even_jpy_1_and_marks_the_lot_changed() -> None:
    book = Book()
    book.open(T0, 1_000)
    book.configure(at(0, seconds=1), 100, email="a@x.jp")
    book.charge(999, at(1))
    book.take_reminders()
    book.account.lots[0].dirty = False

    book.sweep(at(83))  # day 90 - 7 days: the notice is due at this very instant

    assert [
        (r.reminder_id, r.account_id, r.amount_jpy, r.balance_jpy, r.email)
        for r in book.take_reminders()
    ] == [("acc-1:credits_expiring:lot:e1", "acc-1", 1, 1, "a@x.jp")]
    assert book.account.lots[0].dirty is True
    assert book.account.lots[0].expiring_notified is True


@pytest.mark.parametrize(
    ("amount", "method", "code", "says"),
    [
        (0, "credit_card", "invalid_amount", "JPY 0 is not a positive multiple of JPY 1,000"),
        (1_500, "credit_card", "invalid_amount", "JPY 1500 is not a positive multiple"),
        (100_000, "invoice", "invoice_purchase_too_small", "over JPY 100,000, got JPY 100000"),
    ],
)
def test_a_purchase_that_breaks_a_rule_makes_no_lot_and_says_why(
    amount: int, method: str, code: str, says: str
) -> None:
    book = Book()

    with pytest.raises(Rejected) as refused:
        book.purchase(amount, at(1), method)

    assert refused.value.code == code
    assert says in refused.value.reason
    assert str(refused.value) == refused.value.reason
    assert (book.account.lots, book.effects.ledger) == ([], [])


def test_a_lot_pays_only_for_records_that_reached_kafka_by_its_cutoff() -> None:
    """By hand: the lot expires on day 90, the allowance is 1 h, so its cutoff is day 90 + 1 h;
    each record occurred a minute before expiry. The lot is not forfeited yet (the stream did
    not know what was pending), so only the arrival decides."""
    lateness = timedelta(hours=1)
    occurred = at(90) - timedelta(minutes=1)
    cutoff = at(90) + lateness
    for arrived, paid in [
        (at(90) - timedelta(seconds=1), 10),  # before expiry
        (at(90) + timedelta(minutes=30), 10),  # within the allowance
        (cutoff, 10),  # exactly at the cutoff: still in time
        (cutoff + timedelta(microseconds=1), 0),  # after it: overdraft
    ]:
        x = lot("a", 100, at(0), at(90))
        allocations, uncovered = debit([x], 10, occurred, arrived, lateness)
        assert (allocations, uncovered) == (([("a", 10)], 0) if paid else ([], 10)), arrived
