"""Expiry of lots: notices before, forfeiture after, each at a fixed place in the account's
sequence of records, whichever of the stream and the timer gets there first."""

from __future__ import annotations

from datetime import datetime

from worker.domain import reminders
from worker.domain.account import Account, Policy
from worker.domain.events import Effects, LedgerEntry, ReminderDue, ReminderKind
from worker.domain.lots import Lot, forfeit, forfeit_passed, notice_passed

_NOTICE, _FORFEIT = 0, 1


def sweep(account: Account, upto: datetime, policy: Policy, effects: Effects) -> None:
    """Notices and forfeitures due by `upto` (inclusive): for the timer, once every record that
    arrived by `upto` has been applied."""
    catch_up(account, upto, policy, effects, inclusive=True)


def before_arrival(
    account: Account, arrived_at: datetime, policy: Policy, effects: Effects
) -> None:
    """Notices and forfeitures whose moment passed before a record that arrived at
    `arrived_at` is applied: the same place in the sequence the timer would put them."""
    catch_up(account, arrived_at, policy, effects, inclusive=False)


def catch_up(
    account: Account, upto: datetime, policy: Policy, effects: Effects, *, inclusive: bool
) -> None:
    """Every notice and forfeiture due by `upto`, in the order of their moments."""
    due: list[tuple[datetime, int, str, Lot]] = []
    for lot in account.lots:
        if lot.forfeited:
            continue
        if notice_passed(lot, upto, policy.expiring_notice, inclusive):
            due.append((lot.expires_at - policy.expiring_notice, _NOTICE, lot.lot_id, lot))
        if forfeit_passed(lot, upto, policy.lateness, inclusive):
            # Due, so expires_at + lateness <= upto: no overflow.
            due.append((lot.expires_at + policy.lateness, _FORFEIT, lot.lot_id, lot))
    if not due:
        return
    for moment, step, _, lot in sorted(due, key=lambda d: d[:3]):
        if step == _NOTICE:
            _notice(account, lot, moment, policy, effects)
        else:
            _forfeit(account, lot, policy, effects)


def _notice(account: Account, lot: Lot, moment: datetime, policy: Policy, effects: Effects) -> None:
    lot.expiring_notified = True
    lot.dirty = True
    if lot.remaining_jpy > 0:
        notice = _lot_reminder(account, "credits_expiring", lot, lot.remaining_jpy, moment)
        effects.reminders.extend(account.with_forecast([notice], policy))


def _forfeit(account: Account, lot: Lot, policy: Policy, effects: Effects) -> None:
    before = account.balance_jpy
    lost = forfeit(lot)
    if lost == 0:
        return
    after = account.balance_jpy
    account.changed(lot.expires_at)
    effects.ledger.append(
        LedgerEntry(
            entry_id=f"forfeit:{lot.lot_id}",
            account_id=account.account_id,
            kind="forfeit",
            amount_jpy=-lost,
            balance_after_jpy=after,
            occurred_at=lot.expires_at,
            ref=lot.lot_id,
        )
    )
    effects.reminders.append(_lot_reminder(account, "credits_expired", lot, lost, lot.expires_at))
    effects.reminders.extend(
        account.with_forecast(
            reminders.on_balance_change(
                account.reminder_settings, before, after, f"forfeit:{lot.lot_id}", lot.expires_at
            ),
            policy,
        )
    )


def _lot_reminder(
    account: Account, kind: ReminderKind, lot: Lot, amount: int, at: datetime
) -> ReminderDue:
    # Stamped with the lot's own moment, never the clock: a replay yields the same payload.
    return ReminderDue(
        reminder_id=reminders.reminder_id(account.account_id, kind, lot.lot_id),
        account_id=account.account_id,
        kind=kind,
        balance_jpy=account.balance_jpy,
        threshold_jpy=account.reminder_threshold_jpy,
        email=account.reminder_email,
        created_at=at,
        lot_id=lot.lot_id,
        amount_jpy=amount,
        expires_at=lot.expires_at,
    )
