"""Invariants of the domain over random command sequences: money, ledger, replay, reminders."""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import POLICY, T0, examples
from worker.domain.account import Account
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PurchaseCredits,
)
from worker.domain.events import LedgerEntry, ReminderDue
from worker.domain.expiry import sweep
from worker.domain.rating import Rated
from worker.service.billing import BatchReport, _apply_one
from worker.service.ports import Changes, Decoded, EventKey, InputRecord, Source

ACCOUNT_IDS = ("acc-a", "acc-b")


@dataclass(frozen=True)
class Sweep:
    """The expiry timer firing at `now`."""

    now: datetime


Item = Command | Sweep


@dataclass
class World:
    """Accounts plus what the service persists around them: seen event ids, ledger, outbox."""

    accounts: dict[str, Account] = field(default_factory=dict)
    seen: dict[EventKey, bytes] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    reminders: list[ReminderDue] = field(default_factory=list)

    def account(self, account_id: str) -> Account:
        return self.accounts.setdefault(account_id, Account(account_id))

    def apply(self, item: Item, changes: Changes) -> None:
        """Apply one item through the service's own de-duplication (`seen` by event key)."""
        if isinstance(item, Sweep):
            for account_id in sorted(self.accounts):
                sweep(self.accounts[account_id], item.now, POLICY, changes.effects)
            return
        account = self.account(item.account_id)
        before = copy.deepcopy(account)
        effects = changes.effects
        produced = (len(effects.ledger), len(effects.reminders), len(effects.postpay))
        report = BatchReport()
        source: Source = "usage" if isinstance(item, ChargeUsage) else "account"
        record = InputRecord(source, "t", 0, 0, item.account_id.encode(), b"", 0)
        decoded = Decoded(record, item, repr(item).encode())
        applied = _apply_one(decoded, None, account, self.seen, POLICY, changes, report)
        if report.dead:
            assert [d.code for d in report.dead] != ["conflicting_duplicate"]
            assert account == before, "a rejected command must leave the account unchanged"
            assert (len(effects.ledger), len(effects.reminders), len(effects.postpay)) == produced
        if not applied:
            assert account == before

    def run(self, items: Sequence[Item]) -> None:
        """Apply `items` as one batch with its own Effects, like one unit of work."""
        changes = Changes()
        for item in items:
            self.apply(item, changes)
        assert changes.effects.postpay == []
        self.ledger += changes.effects.ledger
        self.reminders += changes.effects.reminders


# -- generating sequences -------------------------------------------------------------------

valid_purchase = st.one_of(
    st.tuples(st.integers(1, 100).map(lambda n: n * 1_000), st.just("credit_card")),
    st.tuples(st.integers(101, 200).map(lambda n: n * 1_000), st.just("invoice")),
)
invalid_purchase = st.sampled_from(
    [(0, "credit_card"), (1_500, "credit_card"), (-1_000, "credit_card"), (100_000, "invoice")]
)
thresholds = st.sampled_from([0, 100, 500, 1_000, 2_000])  # coarse, so balances hit them
step = st.tuples(
    st.sampled_from(ACCOUNT_IDS),
    st.one_of(  # minutes later: same instant, within the lateness, days, past a lot's life
        st.just(0), st.integers(1, 90), st.integers(1, 60 * 24 * 30), st.integers(0, 60 * 24 * 95)
    ),
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from([None, 0, 100, 500, 1_000])),
        st.tuples(st.just("purchase"), valid_purchase),
        st.tuples(st.just("purchase"), invalid_purchase),
        st.tuples(st.just("configure"), st.tuples(st.booleans(), thresholds)),
        st.tuples(st.just("charge"), st.integers(1, 255)),
        st.tuples(st.just("charge"), st.sampled_from([1, 5, 10, 20, 50, 100])),
        st.tuples(st.just("sweep"), st.none()),
        st.tuples(st.just("sweep"), st.none()),
    ),
)


def build(steps: list[tuple[str, int, tuple[str, object]]], wind_down: bool) -> list[Item]:
    """Commands at non-decreasing times; `wind_down` adds the timer ticks that expire every lot."""
    items: list[Item] = []
    configured: dict[str, tuple[bool, int]] = {}
    now = T0
    for n, (account_id, minutes, (kind, arg)) in enumerate(steps):
        now += timedelta(minutes=minutes)
        event_id = f"e{n}"
        if kind == "open":
            assert arg is None or isinstance(arg, int)
            items.append(OpenAccount(event_id, account_id, now, arg))
        elif kind == "purchase":
            amount, method = cast(tuple[int, str], arg)
            items.append(PurchaseCredits(event_id, account_id, now, f"p{n}", amount, method))
        elif kind == "configure":
            enabled, threshold = cast(tuple[bool, int], arg)
            if configured.get(account_id) == (enabled, threshold):
                continue  # a setting that changes nothing: pinned in test_oracle.py
            configured[account_id] = (enabled, threshold)
            items.append(
                ConfigureReminder(
                    event_id, account_id, now, enabled, threshold, f"{account_id}@example.com"
                )
            )
        elif kind == "charge":
            assert isinstance(arg, int)
            items.append(ChargeUsage(event_id, account_id, now, Rated("JP", 10, arg)))
        else:
            items.append(Sweep(now))
    if wind_down:
        items += [Sweep(now + timedelta(days=84)), Sweep(now + timedelta(days=91))]
    return items


sequences = st.builds(build, st.lists(step, min_size=1, max_size=40), st.booleans())


# -- invariants -----------------------------------------------------------------------------


def check_money(world: World) -> None:
    """Every lot conserves its credit, and every account's balance is its ledger's sum."""
    allocated: Counter[str] = Counter()
    forfeited: Counter[str] = Counter()
    for entry in world.ledger:
        for lot_id, taken in entry.allocations:
            allocated[lot_id] += taken
        if entry.kind == "forfeit":
            forfeited[entry.ref] -= entry.amount_jpy
    for account in world.accounts.values():
        entries = [e for e in world.ledger if e.account_id == account.account_id]
        for lot in account.lots:
            assert min(lot.remaining_jpy, lot.consumed_jpy, lot.forfeited_jpy) >= 0
            assert lot.amount_jpy == lot.remaining_jpy + lot.consumed_jpy + lot.forfeited_jpy
            assert lot.consumed_jpy == allocated[lot.lot_id]
            assert lot.forfeited_jpy == forfeited[lot.lot_id]
            assert not lot.forfeited or lot.remaining_jpy == 0
        assert account.overdraft_jpy >= 0
        assert account.postpay_due_jpy == 0
        assert account.balance_jpy == sum(e.amount_jpy for e in entries)
        if entries:
            assert entries[-1].balance_after_jpy == account.balance_jpy
        charged = -sum(e.amount_jpy for e in entries if e.kind == "charge")
        paid_by_lots = sum(t for e in entries if e.kind == "charge" for _, t in e.allocations)
        repaid = sum(t for e in entries if e.kind == "grant" for _, t in e.allocations)
        assert charged == paid_by_lots + account.overdraft_jpy + repaid
    assert len({e.entry_id for e in world.ledger}) == len(world.ledger)


Setting = tuple[bool, int, str | None]
"""(enabled, threshold, email) as the test sent it: never read back from the code under test."""


def expected_reminders(
    setting: Setting | None, item: Item, before: int, after: int, changed: bool = True
) -> Counter[str]:
    """Balance reminders one item must produce for one account (an exact oracle)."""
    due: Counter[str] = Counter()
    if setting is not None and setting[0]:
        threshold = setting[1]
        if isinstance(item, ConfigureReminder):
            # A setting that changes nothing sends nothing.
            due["low_balance"] += changed and after <= threshold
        elif isinstance(item, ChargeUsage | Sweep):
            due["low_balance"] += before > threshold >= after
    if isinstance(item, ChargeUsage | Sweep):
        due["balance_depleted"] += before > 0 >= after
    return due


@settings(max_examples=examples(200), deadline=None)
@given(sequences)
def test_money_is_conserved_and_reminders_follow_balance_edges(items: list[Item]) -> None:
    world = World()
    settings_sent: dict[str, Setting] = {}
    armed: dict[str, bool] = {}
    for item in items:
        before = {a.account_id: a.balance_jpy for a in world.accounts.values()}
        sent = len(world.reminders)
        world.run([item])
        check_money(world)
        changed = True
        if isinstance(item, ConfigureReminder):
            new_setting = (item.enabled, item.threshold_jpy, item.email)
            changed = settings_sent.get(item.account_id) != new_setting
            settings_sent[item.account_id] = new_setting
        new = world.reminders[sent:]
        touched = sorted(world.accounts) if isinstance(item, Sweep) else [item.account_id]
        for account_id in touched:
            balance = world.accounts[account_id].balance_jpy
            setting = settings_sent.get(account_id)
            mine = [r for r in new if r.account_id == account_id]
            got = Counter(r.kind for r in mine if r.kind in ("low_balance", "balance_depleted"))
            want = expected_reminders(setting, item, before.get(account_id, 0), balance, changed)
            assert got == +want, (item, got, want)
            for r in mine:
                if r.kind == "low_balance":
                    assert setting is not None
                    assert r.threshold_jpy == setting[1]
            # low_balance fires at most once per downward crossing: it disarms until the
            # balance is above the threshold again (a configuration change re-evaluates)
            if got["low_balance"] and not isinstance(item, ConfigureReminder):
                assert armed.get(account_id, False)
            armed[account_id] = setting is not None and balance > setting[1]
    ids = [r.reminder_id for r in world.reminders]
    assert len(ids) == len(set(ids)), "a reminder id was emitted twice"
    notices = [r.lot_id for r in world.reminders if r.kind == "credits_expiring"]
    assert len(notices) == len(set(notices))


def redeliver(items: list[Item], picks: list[tuple[int, int]]) -> list[Item]:
    """`items` with some commands delivered again later and some timer ticks repeated."""
    out = list(items)
    for source, offset in picks:
        item = items[source % len(items)]
        position = out.index(item) + 1
        out.insert(position if isinstance(item, Sweep) else position + offset % len(out), item)
    return out


@settings(max_examples=examples(200), deadline=None)
@given(sequences, st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99)), max_size=10))
def test_applying_an_event_again_changes_nothing(
    items: list[Item], picks: list[tuple[int, int]]
) -> None:
    once, again = World(), World()
    once.run(items)

    again.run(redeliver(items, picks))

    assert again.accounts == once.accounts
    assert again.ledger == once.ledger
    assert again.reminders == once.reminders


@settings(max_examples=examples(200), deadline=None)
@given(sequences, st.lists(st.integers(0, 40), max_size=8))
def test_final_state_does_not_depend_on_how_the_sequence_is_batched(
    items: list[Item], cuts: list[int]
) -> None:
    whole, chunked = World(), World()
    whole.run(items)

    bounds = sorted({0, len(items), *(c % (len(items) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        # each batch starts from what the store would load: no object survives between them
        chunked.accounts = copy.deepcopy(chunked.accounts)
        chunked.run(items[start:end])

    assert chunked.accounts == whole.accounts
    assert chunked.ledger == whole.ledger
    assert [r.reminder_id for r in chunked.reminders] == [r.reminder_id for r in whole.reminders]
    assert chunked.reminders == whole.reminders
