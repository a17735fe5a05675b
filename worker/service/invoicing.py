"""Closes a billing month: one invoice per postpay account, exactly once, through the outbox."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, tzinfo

from worker.domain.errors import MonthNotEnded
from worker.domain.events import PostpayCharge
from worker.domain.invoicing import Invoice, build_invoice, closing_window, period_bounds
from worker.service.ports import CloseUnitOfWork, OutboxMessage, Store

InvoiceEncoder = Callable[[Invoice, datetime, tzinfo], OutboxMessage]


async def close_month(
    uow: CloseUnitOfWork, period: str, now: datetime, zone: tzinfo, encode: InvoiceEncoder
) -> list[Invoice] | None:
    """Invoice every account's open postpay usage up to `period`; None if already closed.

    Usage of an earlier month that arrived after that month was closed lands here as lines
    carrying its own period: a published invoice is never changed.
    """
    if not await uow.claim_month(period):
        return None
    by_account: dict[str, list[PostpayCharge]] = defaultdict(list)
    for item in await uow.uninvoiced_usage(period):
        by_account[item.account_id].append(item)
    invoices = [
        invoice
        for account_id in sorted(by_account)
        if (invoice := build_invoice(account_id, period, by_account[account_id], zone))
    ]
    outbox = [encode(invoice, now, zone) for invoice in invoices]
    await uow.save_invoices(period, invoices, now, outbox)
    return invoices


async def close_period(
    store: Store, period: str, now: datetime, zone: tzinfo, encode: InvoiceEncoder
) -> list[Invoice] | None:
    """Close `period` in its own unit of work; refused before the month has ended."""
    _, end = period_bounds(period, zone)
    if now < end:
        raise MonthNotEnded(f"{period} has not ended yet (it ends {end.isoformat()})")
    async with store.close_unit_of_work() as uow:
        return await close_month(uow, period, now, zone, encode)


async def unclosed_periods(store: Store, due: str) -> list[str]:
    """Ended months without a close, oldest first: a month missed during an outage still
    gets its own invoice (within `closing_window`; older usage lands on the oldest)."""
    periods = closing_window(due)
    oldest = await store.oldest_uninvoiced_period()
    closed = await store.closed_periods(periods)
    first = max(oldest or due, periods[0])
    return [p for p in periods if p >= first and p not in closed]


async def lagging_behind(store: Store, period: str, offsets: dict[str, tuple[int, int]]) -> int:
    """Records the group still has to apply of those that were in the inputs when `period`
    first became closable; `offsets` maps "topic:partition" to (committed, end)."""
    mark = await store.mark_end_offsets(period, {k: end for k, (_, end) in offsets.items()})
    committed = {k: c for k, (c, _) in offsets.items()}
    return sum(end - committed.get(k, 0) for k, end in mark.items() if committed.get(k, 0) < end)
