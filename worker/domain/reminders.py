"""Top-up reminders: evaluated on every balance change, never by polling."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.domain.events import ReminderDue, ReminderKind


@dataclass(frozen=True, slots=True)
class ReminderSettings:
    """What reminders read of an account."""

    account_id: str
    prepay: bool
    enabled: bool
    threshold_jpy: int | None
    email: str | None


def reminder_id(account_id: str, kind: ReminderKind, cause: str) -> str:
    """Deterministic, so a replay yields the same id and a consumer can de-duplicate."""
    return f"{account_id}:{kind}:{cause}"


def _due(
    account: ReminderSettings, kind: ReminderKind, balance: int, cause: str, at: datetime
) -> ReminderDue:
    return ReminderDue(
        reminder_id=reminder_id(account.account_id, kind, cause),
        account_id=account.account_id,
        kind=kind,
        balance_jpy=balance,
        threshold_jpy=account.threshold_jpy,
        email=account.email,
        created_at=at,
    )


def on_balance_change(
    account: ReminderSettings, before_jpy: int, after_jpy: int, cause: str, at: datetime
) -> list[ReminderDue]:
    """Reminders for the edge from `before_jpy` to `after_jpy`; prepay accounts only."""
    if not account.prepay:
        return []
    due = []
    threshold = account.threshold_jpy
    if account.enabled and threshold is not None and before_jpy > threshold >= after_jpy:
        due.append(_due(account, "low_balance", after_jpy, cause, at))
    if before_jpy > 0 >= after_jpy:
        due.append(_due(account, "balance_depleted", after_jpy, cause, at))
    return due


def on_configured(
    account: ReminderSettings, balance: int, cause: str, at: datetime
) -> list[ReminderDue]:
    """Enabling or changing the setting at or below the threshold sends one at once
    (the caller calls this only when the setting changed)."""
    threshold = account.threshold_jpy
    if not account.prepay or not account.enabled or threshold is None:
        return []
    if balance > threshold:
        return []
    return [_due(account, "low_balance", balance, cause, at)]
