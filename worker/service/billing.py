"""Applies a batch of records through the domain inside one unit of work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from worker.domain.account import Account, Policy
from worker.domain.commands import ChargeUsage
from worker.domain.errors import Rejected
from worker.domain.expiry import before_arrival, sweep
from worker.service.ports import (
    Changes,
    Dead,
    Decoded,
    Encoder,
    EventKey,
    Store,
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
        changes.outbox += [encoder.dead_letter(d, now) for d in report.dead]
        report.reminders = len(changes.effects.reminders)
        await uow.save(changes)
    return report


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
        changes = Changes(accounts=list(accounts.values()))
        for account in changes.accounts:
            sweep(account, cutoff, policy, changes.effects)
        changes.outbox = [encoder.reminder(r) for r in changes.effects.reminders]
        await uow.save(changes)
    return len(ids)
