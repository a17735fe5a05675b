"""Expiry of lots against the wall clock: notices before, forfeiture after."""

from __future__ import annotations

from datetime import datetime

from worker.domain import reminders
from worker.domain.account import Account, Policy
from worker.domain.events import Effects, LedgerEntry, ReminderDue, ReminderKind
from worker.domain.lots import due_for_expiring_notice, due_for_forfeit, forfeit


def sweep(account: Account, now: datetime, policy: Policy, effects: Effects) -> None:
    """Send `credits_expiring` once per lot, and forfeit lots past expiry and lateness."""
    for lot in sorted(account.lots, key=lambda lot: (lot.expires_at, lot.lot_id)):
        if due_for_expiring_notice(lot, now, policy.expiring_notice):
            lot.expiring_notified = True
            lot.dirty = True
            notice = _lot_reminder(
                account, "credits_expiring", lot.lot_id, lot.remaining_jpy, lot.expires_at, now
            )
            effects.reminders.extend(account.with_forecast([notice], policy))
        if not due_for_forfeit(lot, now, policy.lateness):
            continue
        before = account.balance_jpy
        lost = forfeit(lot)
        if lost == 0:
            continue
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
        effects.reminders.append(
            _lot_reminder(account, "credits_expired", lot.lot_id, lost, lot.expires_at, now)
        )
        effects.reminders.extend(
            account.with_forecast(
                reminders.on_balance_change(
                    account.reminder_settings, before, after, f"forfeit:{lot.lot_id}", now
                ),
                policy,
            )
        )


def _lot_reminder(
    account: Account,
    kind: ReminderKind,
    lot_id: str,
    amount: int,
    expires_at: datetime,
    now: datetime,
) -> ReminderDue:
    return ReminderDue(
        reminder_id=reminders.reminder_id(account.account_id, kind, lot_id),
        account_id=account.account_id,
        kind=kind,
        balance_jpy=account.balance_jpy,
        threshold_jpy=account.reminder_threshold_jpy,
        email=account.reminder_email,
        created_at=now,
        lot_id=lot_id,
        amount_jpy=amount,
        expires_at=expires_at,
    )
