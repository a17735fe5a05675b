"""Closes a billing month: one invoice per postpay account, exactly once, through the outbox."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Protocol

from worker.domain.events import PostpayCharge
from worker.domain.invoicing import Invoice, build_invoice
from worker.service.ports import OutboxMessage


class CloseUnitOfWork(Protocol):
    async def claim_month(self, period: str) -> bool:
        """Record the close of `period`; False when it was closed before."""

    async def uninvoiced_usage(self, period: str) -> Sequence[PostpayCharge]:
        """Postpay usage of `period` and earlier that is on no invoice yet."""

    async def save_invoices(
        self,
        period: str,
        invoices: Sequence[Invoice],
        issued_at: datetime,
        outbox: Sequence[OutboxMessage],
    ) -> None:
        """Store the invoices, link their usage, queue them for publication."""


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
