"""Applies a batch of records through the domain inside one unit of work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from worker.domain.account import Account, Policy
from worker.domain.balance import balance_state
from worker.domain.commands import ChargeUsage
from worker.domain.errors import Rejected
from worker.domain.expiry import before_arrival, sweep
from worker.domain.forecast import window_days
from worker.service.ports import (
    Changes,
    Dead,
    Decoded,
    Encoder,
    EventKey,
    OutboxMessage,
    Store,
    UnitOfWork,
)


@dataclass
class BatchReport:
    """What became of a batch, for metrics and logs."""

    applied: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    dead: list[Dead] = field(default_factory=list)
    implicit_accounts: int = 0
    reminders: int = 0


async def apply_batch(
    store: Store,
    decoded: Sequence[Decoded | Dead],
    policy: Policy,
    encoder: Encoder,
    now: datetime,
) -> BatchReport:
    """Apply what decoded, dead-letter the rest; all in one transaction.

    Records are applied in the order given, which is the aligner's: never re-sorted here, so
    the order does not depend on where one batch ends and the next begins."""
    report = BatchReport()
    valid = [d for d in decoded if isinstance(d, Decoded)]
    report.dead.extend(d for d in decoded if isinstance(d, Dead))
    changes = Changes()
    async with store.unit_of_work() as uow:
        account_ids = sorted({d.command.account_id for d in valid})
        accounts = await uow.lock_accounts(account_ids)
        earliest: dict[str, datetime] = {}
        for d in valid:
            at = d.command.occurred_at
            earliest[d.command.account_id] = min(earliest.get(d.command.account_id, at), at)
        versions = await _prepare(uow, accounts, earliest, policy)
        seen = await uow.seen(sorted({d.key for d in valid}))
        charged: set[str] = set()
        for item in valid:
            account = accounts[item.command.account_id]
            applied = _apply_one(item, account, seen, policy, changes, report)
            if applied and isinstance(item.command, ChargeUsage):
                charged.add(account.account_id)
        # Usage for an account never opened: charged to an implicit prepay account.
        report.implicit_accounts = sum(
            1 for a in uow.created if a in charged and not accounts[a].opened
        )
        changes.accounts = list(accounts.values())
        changes.outbox = [encoder.reminder(r) for r in changes.effects.reminders]
        changes.outbox += _balances(accounts, versions, encoder)
        changes.outbox += [encoder.dead_letter(d, now) for d in report.dead]
        report.reminders = len(changes.effects.reminders)
        await uow.save(changes)
    return report


async def _prepare(
    uow: UnitOfWork,
    accounts: Mapping[str, Account],
    earliest: Mapping[str, datetime],
    policy: Policy,
) -> dict[str, int]:
    """Load the daily usage the forecasts may need; return each account's version as loaded."""
    starts: dict[str, date] = {}
    for account_id, account in accounts.items():
        first = earliest.get(account_id)
        for lot in account.lots:
            # An expiry notice or a forfeit of this lot may be raised at an earlier moment.
            notice = lot.expires_at - policy.expiring_notice
            first = notice if first is None else min(first, notice)
        if first is not None:
            starts[account_id] = window_days(first, policy.zone)[-1]
    if starts:
        for account_id, usage in (await uow.load_usage(starts)).items():
            accounts[account_id].usage_by_day = usage
    return {account_id: account.version for account_id, account in accounts.items()}


def _balances(
    accounts: Mapping[str, Account], versions: Mapping[str, int], encoder: Encoder
) -> list[OutboxMessage]:
    """One balance snapshot per account that changed: its state after the batch."""
    return [
        encoder.balance(balance_state(account))
        for account_id, account in sorted(accounts.items())
        if account.version != versions[account_id]
    ]


def _apply_one(
    item: Decoded,
    account: Account,
    seen: dict[EventKey, bytes],
    policy: Policy,
    changes: Changes,
    report: BatchReport,
) -> bool:
    """Apply one event unless it is a duplicate or breaks a rule; True when applied."""
    source = item.record.source
    prior = seen.get(item.key)
    if prior is not None:
        if prior == item.fingerprint:
            report.duplicates[source] += 1
        else:
            reason = f"event_id {item.command.event_id} was applied before with another payload"
            report.dead.append(Dead(item.record, "conflicting_duplicate", reason))
        return False
    arrived_at = item.record.arrived_at
    if arrived_at is not None:
        # Notices and forfeitures whose moment passed before this record arrived go first.
        before_arrival(account, arrived_at, policy, changes.effects)
    try:
        account.apply(item.command, policy, changes.effects)
    except Rejected as exc:
        report.dead.append(Dead(item.record, exc.code, exc.reason))
        return False
    seen[item.key] = item.fingerprint
    changes.processed.append(item)
    report.applied[source] += 1
    return True


async def sweep_expiry(
    store: Store, cutoff: datetime, policy: Policy, encoder: Encoder, limit: int = 500
) -> int:
    """Forfeit and announce what is due by `cutoff` for up to `limit` accounts; returns how many.
    Only for a cutoff by which every input record that arrived has been applied."""
    async with store.unit_of_work() as uow:
        ids = await uow.accounts_due_for_expiry(
            cutoff, policy.lateness, policy.expiring_notice, limit
        )
        if not ids:
            return 0
        accounts = await uow.lock_accounts(ids)
        versions = await _prepare(uow, accounts, dict.fromkeys(ids, cutoff), policy)
        changes = Changes(accounts=list(accounts.values()))
        for account in changes.accounts:
            sweep(account, cutoff, policy, changes.effects)
        changes.outbox = [encoder.reminder(r) for r in changes.effects.reminders]
        changes.outbox += _balances(accounts, versions, encoder)
        await uow.save(changes)
    return len(ids)
