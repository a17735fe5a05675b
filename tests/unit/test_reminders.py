"""Top-up reminders on balance edges, and lot expiry notices and forfeiture."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.builders import T0, Book, at

EXPIRY = at(90)
LATENESS = timedelta(hours=1)


def funded(balance_jpy: int = 1_000, threshold_jpy: int | None = 500) -> Book:
    """An open prepay account holding `balance_jpy`, its reminder set at `threshold_jpy`."""
    book = Book()
    book.open(T0, test_credits_jpy=0)
    book.purchase(balance_jpy, T0)
    if threshold_jpy is not None:
        book.configure(T0, threshold_jpy)
    book.take_reminders()
    return book


def kinds(book: Book) -> list[str]:
    return [r.kind for r in book.take_reminders()]


def test_low_balance_fires_once_when_the_balance_reaches_the_threshold() -> None:
    book = funded(1_000, 500)

    charge = book.charge(500, at(1))

    [reminder] = book.take_reminders()
    assert reminder.kind == "low_balance"
    assert reminder.reminder_id == f"acc-1:low_balance:charge:{charge}"
    assert (reminder.balance_jpy, reminder.threshold_jpy, reminder.email) == (
        500,
        500,
        "ops@example.com",
    )
    assert reminder.created_at == at(1)


def test_low_balance_is_not_sent_while_the_balance_stays_above() -> None:
    book = funded(1_000, 500)

    book.charge(490, at(1))

    assert kinds(book) == []


def test_low_balance_is_not_resent_on_further_debits() -> None:
    book = funded(1_000, 500)
    book.charge(600, at(1))
    book.take_reminders()

    book.charge(100, at(2))
    book.charge(100, at(3))

    assert kinds(book) == []


def test_low_balance_is_not_resent_when_the_balance_leaves_the_threshold_downwards() -> None:
    book = funded(1_000, 500)
    book.charge(500, at(1))
    book.take_reminders()

    book.charge(10, at(2))

    assert kinds(book) == []


def test_low_balance_rearms_after_a_purchase_lifts_the_balance_above() -> None:
    book = funded(1_000, 500)
    book.charge(600, at(1))
    book.purchase(1_000, at(2))
    book.take_reminders()

    book.charge(1_000, at(3))

    assert kinds(book) == ["low_balance"]


def test_purchase_that_leaves_the_balance_at_or_below_does_not_rearm() -> None:
    book = funded(1_000, 2_500)  # configured below: one at once, taken by `funded`
    book.purchase(1_000, at(1))

    book.charge(100, at(2))

    assert kinds(book) == []


def test_enabling_while_already_at_or_below_sends_one_at_once() -> None:
    book = funded(1_000, None)
    book.charge(700, at(1))

    configure = book.configure(at(2), 500)
    book.charge(100, at(3))

    [reminder] = book.take_reminders()
    assert reminder.kind == "low_balance"
    assert reminder.reminder_id == f"acc-1:low_balance:configure:{configure}"
    assert reminder.balance_jpy == 300
    assert reminder.created_at == at(2)


def test_changing_the_setting_while_at_or_below_sends_one_at_once() -> None:
    book = funded(1_000, 500)
    book.charge(700, at(1))
    book.take_reminders()

    book.configure(at(2), 400, email="new@example.com")

    [reminder] = book.take_reminders()
    assert (reminder.kind, reminder.threshold_jpy, reminder.email) == (
        "low_balance",
        400,
        "new@example.com",
    )


def test_enabling_with_the_balance_exactly_at_the_threshold_sends_one() -> None:
    book = funded(1_000, None)

    book.configure(at(1), 1_000)  # at the threshold counts as at or below

    [reminder] = book.take_reminders()
    assert (reminder.kind, reminder.balance_jpy, reminder.threshold_jpy) == (
        "low_balance",
        1_000,
        1_000,
    )


def test_enabling_above_the_threshold_sends_nothing() -> None:
    book = funded(1_000, None)

    book.configure(at(1), 999)

    assert kinds(book) == []


def test_disabled_reminder_sends_no_low_balance() -> None:
    book = funded(1_000, None)
    book.configure(at(1), 500, enabled=False)

    book.charge(600, at(2))

    assert kinds(book) == []


def test_reminder_is_disabled_until_configured() -> None:
    book = funded(1_000, None)

    book.charge(990, at(1))

    assert kinds(book) == []


def test_balance_depleted_on_reaching_zero_whatever_the_setting() -> None:
    book = funded(1_000, None)

    book.charge(1_000, at(1))
    book.charge(100, at(2))

    [reminder] = book.take_reminders()
    assert (reminder.kind, reminder.balance_jpy) == ("balance_depleted", 0)


def test_balance_depleted_and_low_balance_both_fire_on_one_charge_below_zero() -> None:
    book = funded(1_000, 500)

    book.charge(1_200, at(1))

    assert kinds(book) == ["low_balance", "balance_depleted"]


def test_balance_depleted_rearms_after_the_balance_rises_above_zero() -> None:
    book = funded(1_000, None)
    book.charge(1_500, at(1))
    book.purchase(1_000, at(2))  # -500 + 1000 = 500
    book.take_reminders()

    book.charge(600, at(3))

    assert kinds(book) == ["balance_depleted"]


def test_balance_depleted_from_jpy_1_to_zero_and_not_at_jpy_1() -> None:
    book = funded(1_000, None)

    book.charge(999, at(1))  # 1,000 -> 1: still above zero
    assert kinds(book) == []
    book.charge(1, at(2))  # 1 -> 0

    assert kinds(book) == ["balance_depleted"]


def test_no_balance_depleted_when_the_balance_was_not_above_zero() -> None:
    book = Book()
    book.open(T0, test_credits_jpy=0)

    book.charge(100, at(1))

    assert kinds(book) == []


def test_postpay_accounts_get_no_low_balance() -> None:
    book = funded(1_000, None)
    book.switch_to_postpay(at(1))

    book.configure(at(2), 2_000)
    book.charge(1_500, at(3))

    assert kinds(book) == []
    assert book.account.balance_jpy == -500


def test_credits_expiring_once_per_lot_seven_days_before_expiry() -> None:
    book = Book()
    book.open(T0)

    book.sweep(EXPIRY - timedelta(days=7, seconds=1))
    assert kinds(book) == []
    book.sweep(EXPIRY - timedelta(days=7))
    book.sweep(EXPIRY - timedelta(days=6))

    [notice] = book.take_reminders()
    assert notice.kind == "credits_expiring"
    assert (notice.lot_id, notice.amount_jpy, notice.expires_at) == ("lot:e1", 100, EXPIRY)
    assert notice.reminder_id == "acc-1:credits_expiring:lot:e1"


def test_no_expiring_notice_for_a_lot_with_nothing_left() -> None:
    book = Book()
    book.open(T0)
    book.charge(100, at(1))
    book.take_reminders()

    book.sweep(EXPIRY - timedelta(days=1))

    assert kinds(book) == []


def test_credits_are_not_forfeited_before_expiry_plus_lateness() -> None:
    book = Book()
    book.open(T0)

    book.sweep(EXPIRY + LATENESS - timedelta(seconds=1))

    assert [e.kind for e in book.effects.ledger] == ["grant"]
    assert "credits_expired" not in kinds(book)
    assert book.account.balance_jpy == 100


def test_late_usage_within_the_lateness_still_uses_the_expired_lot() -> None:
    book = Book()
    book.open(T0)
    book.sweep(EXPIRY + LATENESS / 2)

    charge = book.charge(30, EXPIRY - timedelta(seconds=1))
    book.sweep(EXPIRY + LATENESS)

    assert book.entry(f"charge:{charge}").allocations == (("lot:e1", 30),)
    assert book.entry("forfeit:lot:e1").amount_jpy == -70


def test_credits_are_forfeited_after_expiry_plus_lateness() -> None:
    book = Book()
    book.open(T0)
    book.charge(30, at(1))
    book.take_reminders()

    book.sweep(EXPIRY + LATENESS)
    book.sweep(EXPIRY + LATENESS * 5)

    entry = book.entry("forfeit:lot:e1")
    assert (entry.kind, entry.amount_jpy, entry.balance_after_jpy) == ("forfeit", -70, 0)
    assert entry.occurred_at == EXPIRY
    lot = book.account.lots[0]
    assert (lot.remaining_jpy, lot.consumed_jpy, lot.forfeited_jpy, lot.forfeited) == (
        0,
        30,
        70,
        True,
    )
    # The notice whose moment passed first is never skipped, even when the first sweep comes
    # after expiry: a timer that was not running then must send what a running one sent.
    notice, *reminders = book.take_reminders()
    assert (notice.kind, notice.amount_jpy) == ("credits_expiring", 70)
    assert notice.created_at == EXPIRY - timedelta(days=7)
    assert [r.kind for r in reminders] == ["credits_expired", "balance_depleted"]
    assert (reminders[0].lot_id, reminders[0].amount_jpy) == ("lot:e1", 70)
    assert reminders[0].reminder_id == "acc-1:credits_expired:lot:e1"
    assert reminders[0].created_at == EXPIRY
    assert [e.kind for e in book.effects.ledger].count("forfeit") == 1


def test_nothing_is_forfeited_from_an_empty_lot() -> None:
    book = Book()
    book.open(T0)
    book.charge(100, at(1))
    book.take_reminders()

    book.sweep(EXPIRY + LATENESS)

    assert [e.kind for e in book.effects.ledger] == ["grant", "charge"]
    assert kinds(book) == []


def test_forfeiture_can_trigger_low_balance() -> None:
    book = Book()
    book.open(T0)  # 100 test credits, expiring first
    book.purchase(1_000, at(30))
    book.configure(at(31), 1_000)
    book.take_reminders()

    book.sweep(EXPIRY + LATENESS)

    notice, *reminders = book.take_reminders()
    assert (notice.kind, notice.lot_id) == ("credits_expiring", "lot:e1")
    assert [r.kind for r in reminders] == ["credits_expired", "low_balance"]
    assert reminders[1].reminder_id == "acc-1:low_balance:forfeit:lot:e1"
    assert reminders[1].balance_jpy == 1_000


def test_reminder_ids_are_deterministic_on_replay() -> None:
    def run() -> list[str]:
        book = funded(1_000, 500)
        book.charge(1_000, at(1))
        book.sweep(EXPIRY - timedelta(days=1))
        return [r.reminder_id for r in book.effects.reminders]

    assert run() == run()
