"""Builders for domain unit tests: one account driven command by command, no I/O."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from worker.domain.account import Account, Policy
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PurchaseCredits,
    SwitchToPostpay,
)
from worker.domain.events import Effects, LedgerEntry, ReminderDue
from worker.domain.expiry import sweep
from worker.domain.rating import Rated

T0 = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
POLICY = Policy()


def examples(n: int) -> int:
    """`n` generated examples; a fifth in mutation runs (make mutation), where each surviving
    mutant runs again every test that reaches it."""
    return max(20, n // 5) if os.environ.get("HYPOTHESIS_PROFILE") == "mutation" else n


def at(days: float = 0, hours: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, seconds=seconds)


@dataclass
class Book:
    """One account and everything applying commands to it produced."""

    account: Account = field(default_factory=lambda: Account("acc-1"))
    policy: Policy = POLICY
    effects: Effects = field(default_factory=Effects)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> str:
        return f"e{next(self._ids)}"

    def apply(self, command: Command) -> str:
        self.account.apply(command, self.policy, self.effects)
        return command.event_id

    def open(self, when: datetime = T0, test_credits_jpy: int | None = None) -> str:
        return self.apply(
            OpenAccount(self.next_id(), self.account.account_id, when, test_credits_jpy)
        )

    def purchase(self, amount_jpy: int, when: datetime, method: str = "credit_card") -> str:
        event_id = self.next_id()
        return self.apply(
            PurchaseCredits(
                event_id, self.account.account_id, when, f"p-{event_id}", amount_jpy, method
            )
        )

    def configure(
        self,
        when: datetime,
        threshold_jpy: int,
        enabled: bool = True,
        email: str | None = "ops@example.com",
    ) -> str:
        return self.apply(
            ConfigureReminder(
                self.next_id(), self.account.account_id, when, enabled, threshold_jpy, email
            )
        )

    def charge(self, amount_jpy: int, when: datetime, country: str = "JP") -> str:
        """A usage charge of `amount_jpy`, as that many JPY-1 segments unless it divides by 10."""
        price, segments = (10, amount_jpy // 10) if amount_jpy % 10 == 0 else (1, amount_jpy)
        return self.apply(
            ChargeUsage(
                self.next_id(), self.account.account_id, when, Rated(country, price, segments)
            )
        )

    def use(self, rated: Rated, when: datetime) -> str:
        return self.apply(ChargeUsage(self.next_id(), self.account.account_id, when, rated))

    def switch_to_postpay(self, when: datetime) -> str:
        return self.apply(SwitchToPostpay(self.next_id(), self.account.account_id, when, "c-1"))

    def sweep(self, now: datetime) -> None:
        sweep(self.account, now, self.policy, self.effects)

    def entry(self, entry_id: str) -> LedgerEntry:
        return next(e for e in self.effects.ledger if e.entry_id == entry_id)

    def reminders(self, kind: str | None = None) -> list[ReminderDue]:
        return [r for r in self.effects.reminders if kind is None or r.kind == kind]

    def take_reminders(self) -> list[ReminderDue]:
        """The reminders produced since the last call."""
        due, self.effects.reminders = self.effects.reminders, []
        return due
