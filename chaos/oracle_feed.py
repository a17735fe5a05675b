"""Feeds a chaos run's input records to the reference model (chaos/oracle.py) on the same
schedule as chaos/model.py: each account's records in production order, the month close before
the first record produced after the close gate, then sweeps just before each expiry and at the
end. `make chaos` checks the domain-built expectation against it before comparing the worker.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from chaos import oracle
from chaos.model import Expected, Record
from worker.domain.account import Policy
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PayInvoice,
    PurchaseCredits,
    SwitchToPostpay,
)


def rules_of(policy: Policy) -> oracle.Rules:
    return oracle.Rules(
        test_credits_jpy=policy.test_credits_jpy,
        validity=policy.lot_validity,
        lateness=policy.lateness,
        expiring_notice=policy.expiring_notice,
        zone=policy.zone,
    )


def event_of(
    command: Command, source: str, token: int, arrived_at: datetime | None = None
) -> oracle.Event:
    """The command as the reference model reads it (the fields of the wire payload); the
    record arrived at `arrived_at` (None: when the event occurred)."""
    at = command.occurred_at
    base = (source, command.event_id, command.account_id, at, arrived_at or at)
    if isinstance(command, ChargeUsage):
        r = command.rated
        return oracle.Event(
            base[0],
            "usage",
            *base[1:],
            amount_jpy=r.unit_price_jpy * r.segments,
            country=r.country,
            unit_price_jpy=r.unit_price_jpy,
            segments=r.segments,
            payload_id=token,
        )
    extra: dict[str, Any]
    if isinstance(command, OpenAccount):
        kind, extra = "account_opened", {"test_credits_jpy": command.test_credits_jpy}
    elif isinstance(command, PurchaseCredits):
        kind = "credits_purchased"
        extra = {"amount_jpy": command.amount_jpy, "payment_method": command.payment_method}
    elif isinstance(command, ConfigureReminder):
        kind = "reminder_configured"
        extra = {
            "enabled": command.enabled,
            "threshold_jpy": command.threshold_jpy,
            "email": command.email,
        }
    elif isinstance(command, SwitchToPostpay):
        kind, extra = "switched_to_postpay", {"contract_id": command.contract_id}
    else:
        assert isinstance(command, PayInvoice)
        kind = "invoice_paid"
        extra = {"invoice_id": command.invoice_id, "amount_jpy": command.amount_jpy}
    return oracle.Event(base[0], kind, *base[1:], payload_id=token, **extra)


def replay(
    records: Sequence[Record], policy: Policy, period: str, close_seq: int, end: datetime | None
) -> list[oracle.Outcome]:
    """One outcome per account, for every record that decoded."""
    rules = rules_of(policy)
    by_account: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        command = record.item.command
        if record.item.dead_code is None and command is not None:
            by_account[command.account_id].append(record)
    outcomes = []
    for account_id in sorted(by_account):
        mine = sorted(by_account[account_id], key=lambda r: (r.item.seq, r.offset))
        model = oracle.Oracle(rules)
        closed = False
        # A re-send is the same payload: to the reference model, which compares whole
        # events, it arrives as its first copy did.
        first_arrival: dict[int, datetime | None] = {}
        for record in mine:
            if not closed and record.item.seq >= close_seq:
                model.step(oracle.Close(period))
                closed = True
            command = record.item.command
            assert command is not None
            if record.arrived_at is not None:
                # What the timer announces or forfeits before the record arrived comes first.
                model.step(oracle.Tick(record.arrived_at - timedelta(microseconds=1)))
            arrived = first_arrival.setdefault(record.item.token, record.arrived_at)
            model.step(event_of(command, record.item.source, record.item.token, arrived))
        if not closed:
            model.step(oracle.Close(period))
        if end is not None:
            just_before = timedelta(microseconds=1)
            lots = model.out.accounts[account_id].lots if account_id in model.out.accounts else []
            instants = sorted(
                {
                    lot.expires_at - just_before
                    for lot in lots
                    if lot.expires_at - just_before <= end
                }
            )
            for now in [*instants, end]:
                model.step(oracle.Tick(now))
        outcomes.append(model.out)
    return outcomes


def disagreements(
    records: Sequence[Record], expected: Expected, outcomes: Sequence[oracle.Outcome]
) -> list[str]:
    """Where the domain-built expectation and the reference model differ (empty: they agree)."""
    ledger = {
        e.entry_id: (e.account_id, e.amount_jpy, e.balance_after_jpy, tuple(e.allocations))
        for o in outcomes
        for e in o.ledger
    }
    reminders = {r.reminder_id: (r.kind, r.balance_jpy) for o in outcomes for r in o.reminders}
    invoices = {i.invoice_id: i.total_jpy for o in outcomes for i in o.invoices.values()}
    model_ledger = {
        e.entry_id: (e.account_id, e.amount_jpy, e.balance_after_jpy, tuple(e.allocations))
        for e in expected.ledger.values()
    }
    model_reminders = {r.reminder_id: (r.kind, r.balance_jpy) for r in expected.reminders.values()}
    model_invoices = {i.invoice_id: i.total_jpy for i in expected.invoices.values()}
    found = []
    for name, mine, theirs in (
        ("ledger", ledger, model_ledger),
        ("reminders", reminders, model_reminders),
        ("invoices", invoices, model_invoices),
    ):
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                found.append(f"{name} {key}: oracle {mine.get(key)} model {theirs.get(key)}")
    codes = Counter(code for o in outcomes for code in o.dead_log)
    decoded = {r.position for r in records if r.item.dead_code is None and r.item.command}
    rule_codes = Counter(c for p, c in expected.dead.items() if p in decoded)
    if codes != rule_codes:
        found.append(f"dead letters: oracle {dict(codes)} model {dict(rule_codes)}")
    return found
