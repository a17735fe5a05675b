"""An account's balance as the platform sees it: one snapshot per change, newest version wins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from worker.domain.account import Account, Plan

Status = Literal["ok", "low", "depleted", "postpay"]


@dataclass(frozen=True)
class NextExpiry:
    """The soonest lot that still holds credit."""

    expires_at: datetime
    amount_jpy: int


@dataclass(frozen=True)
class BalanceState:
    """What `billing.balances.v1` carries for one account."""

    account_id: str
    plan: Plan
    balance_jpy: int
    overdraft_jpy: int
    postpay_due_jpy: int
    credit_jpy: int
    next_expiry: NextExpiry | None
    status: Status
    version: int
    as_of: datetime | None


def status_of(account: Account) -> Status:
    """Postpay first; a prepay account is depleted at or below 0, low at or below its threshold."""
    balance = account.balance_jpy
    if account.plan == "postpay":
        return "postpay"
    if balance <= 0:
        return "depleted"
    threshold = account.reminder_threshold_jpy
    if account.reminder_enabled and threshold is not None and balance <= threshold:
        return "low"
    return "ok"


def balance_state(account: Account) -> BalanceState:
    """The account's state now; credit counts lots not forfeited (they still pay late usage)."""
    open_lots = [lot for lot in account.lots if not lot.forfeited and lot.remaining_jpy > 0]
    soonest = min(
        open_lots, key=lambda lot: (lot.expires_at, lot.granted_at, lot.lot_id), default=None
    )
    return BalanceState(
        account_id=account.account_id,
        plan=account.plan,
        balance_jpy=account.balance_jpy,
        overdraft_jpy=account.overdraft_jpy,
        postpay_due_jpy=account.postpay_due_jpy,
        credit_jpy=sum(lot.remaining_jpy for lot in open_lots),
        next_expiry=(
            None if soonest is None else NextExpiry(soonest.expires_at, soonest.remaining_jpy)
        ),
        status=status_of(account),
        version=account.version,
        as_of=account.as_of,
    )
