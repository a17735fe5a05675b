"""Top-up reminders: evaluated on every balance change, never by polling."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from worker.domain.events import ReminderDue, ReminderKind

if TYPE_CHECKING:
    from worker.domain.account import Account


def reminder_id(account_id: str, kind: ReminderKind, cause: str) -> str:
    """Deterministic, so a replay yields the same id and a consumer can de-duplicate."""
    return f"{account_id}:{kind}:{cause}"


def _due(
    account: Account, kind: ReminderKind, balance: int, cause: str, at: datetime
) -> ReminderDue:
    return ReminderDue(
        reminder_id=reminder_id(account.account_id, kind, cause),
        account_id=account.account_id,
        kind=kind,
        balance_jpy=balance,
        threshold_jpy=account.reminder_threshold_jpy,
        email=account.reminder_email,
        created_at=at,
    )


def on_balance_change(
    account: Account, before_jpy: int, after_jpy: int, cause: str, at: datetime
) -> list[ReminderDue]:
    """Reminders for the edge from `before_jpy` to `after_jpy`; prepay accounts only."""
    if account.plan != "prepay":
        return []
    due = []
    threshold = account.reminder_threshold_jpy
    if account.reminder_enabled and threshold is not None and before_jpy > threshold >= after_jpy:
        due.append(_due(account, "low_balance", after_jpy, cause, at))
    if before_jpy > 0 >= after_jpy:
        due.append(_due(account, "balance_depleted", after_jpy, cause, at))
    return due


def on_configured(account: Account, cause: str, at: datetime) -> list[ReminderDue]:
    """Enabling or changing the setting at or below the threshold sends one at once
    (the caller calls this only when the setting changed)."""
    threshold = account.reminder_threshold_jpy
    balance = account.balance_jpy
    if account.plan != "prepay" or not account.reminder_enabled or threshold is None:
        return []
    if balance > threshold:
        return []
    return [_due(account, "low_balance", balance, cause, at)]
