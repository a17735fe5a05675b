"""Applies a batch of records through the domain inside one unit of work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

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
    pending: Mapping[int, datetime | None] | None = None,
) -> BatchReport:
    """Apply what decoded, dead-letter the rest; all in one transaction.

    Records are applied in the order given, which is the aligner's: never re-sorted here, so
    the order does not depend on where one batch ends and the next begins. `pending` holds, per
    input partition, the earliest arrival among records still to be applied after this batch
    (None: not known); None altogether means nothing is pending."""
    report = BatchReport()
    valid = [d for d in decoded if isinstance(d, Decoded)]
    bounds = expiry_bounds(valid, pending)
    report.dead.extend(d for d in decoded if isinstance(d, Dead))
    changes = Changes()
    async with store.unit_of_work() as uow:
        account_ids = sorted({d.command.account_id for d in valid})
        # The input partition each account's records came on: stored on its rows (ADR 0002).
        partitions = {d.command.account_id: d.record.partition for d in valid}
        accounts = await uow.lock_accounts(account_ids, partitions)
        first_at: dict[str, datetime] = {}
        for d in valid:
            at = d.command.occurred_at
            first_at[d.command.account_id] = min(first_at.get(d.command.account_id, at), at)
        versions = await _prepare(uow, accounts, first_at, policy)
        seen = await uow.seen(sorted({d.key for d in valid}))
        charged: set[str] = set()
        for item, bound in zip(valid, bounds, strict=True):
            account = accounts[item.command.account_id]
            applied = _apply_one(item, bound, account, seen, policy, changes, report)
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


_NOTHING_PENDING = datetime.max.replace(tzinfo=UTC)


def earliest(*times: datetime | None) -> datetime | None:
    """The earliest of `times`; None (not known) wins."""
    if any(t is None for t in times):
        return None
    return min(t for t in times if t is not None)


def expiry_bounds(
    valid: Sequence[Decoded], pending: Mapping[int, datetime | None] | None
) -> list[datetime | None]:
    """Per record, the moment before which due notices and forfeitures go in front of it.

    A lot is forfeited only once no record that could still draw from it is waiting: not the
    record itself, not one after it in this batch, not one still pending on either input of
    its partition. Records are applied in event-time order across the two inputs, so a record
    that arrived late can come before one that arrived in time; the bound is the earliest
    arrival among them all. None: not known, so nothing goes in front (the timer does it)."""
    bounds: list[datetime | None] = [None] * len(valid)
    later: dict[int, datetime | None] = {}
    for i in range(len(valid) - 1, -1, -1):
        record = valid[i].record
        p = record.partition
        if p not in later:
            later[p] = _NOTHING_PENDING if pending is None else pending.get(p)
        later[p] = bounds[i] = earliest(record.arrived_at, later[p])
    return bounds


async def _prepare(
    uow: UnitOfWork,
    accounts: Mapping[str, Account],
    first_at: Mapping[str, datetime],
    policy: Policy,
) -> dict[str, int]:
    """Load the daily usage the forecasts may need; return each account's version as loaded."""
    starts: dict[str, date] = {}
    for account_id, account in accounts.items():
        first = first_at.get(account_id)
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
        encoder.balance(balance_state(account), versions[account_id])
        for account_id, account in sorted(accounts.items())
        if account.version != versions[account_id]
    ]


def _apply_one(
    item: Decoded,
    bound: datetime | None,
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
    if bound is not None:
        # Notices and forfeitures whose moment passed before every record still to be applied
        # on this partition arrived go first: none of those records can draw from such a lot.
        before_arrival(account, bound, policy, changes.effects)
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
