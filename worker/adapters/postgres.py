"""PostgreSQL unit of work: set-based reads and writes, one transaction per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.domain.account import Account, OpenInvoice
from worker.domain.events import PostpayCharge
from worker.domain.invoicing import Invoice
from worker.domain.lots import Lot
from worker.errors import AccountNotLocked
from worker.service.ports import CHARGE_PREFIX, Changes, Decoded, EventKey, OutboxMessage

MONTH_CLOSE_LOCK_KEY = 0x5B111_0003
# The worker's sessions plan every statement for the keys it is given. Its statements look up
# an array of keys as long as the batch; a generic plan is made once per connection from the
# table sizes of that moment, so one made on a fresh database scans `ledger_entries` or
# `outbox` whole and keeps doing so as they grow: each batch slower than the one before, and
# batches grow while they wait. Planning costs tens of microseconds per statement.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
# An account stored before migration 0009 with no applied event yet: its next record tells.
UNKNOWN_PARTITION = -1

_LOCK_ACCOUNTS = """
SELECT * FROM accounts WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE
"""
_LOAD_LOTS = """
SELECT * FROM lots
WHERE account_id = ANY($1::text[]) AND NOT forfeited AND remaining_jpy > 0
"""
_LOAD_INVOICES = """
SELECT invoice_id, account_id, total_jpy, paid_jpy FROM invoices
WHERE account_id = ANY($1::text[])
"""
# A usage event's charge entry is its de-duplication record (migration 0011); account events
# keep theirs in processed_events. One round trip for both.
_SEEN = """
SELECT 'usage' AS source, l.entry_id AS event_id, l.fingerprint
FROM ledger_entries l
WHERE l.entry_id = ANY($1::text[])
UNION ALL
SELECT p.source, p.event_id, p.fingerprint
FROM processed_events p
JOIN unnest($2::text[]) AS k(event_id) ON p.source = 'account' AND p.event_id = k.event_id
"""
# Charges written before migration 0011 carry no fingerprint: their event's is here.
_SEEN_BEFORE_0011 = """
SELECT event_id, fingerprint FROM processed_events
WHERE source = 'usage' AND event_id = ANY($1::text[])
"""
_DUE = """
SELECT DISTINCT account_id FROM lots
WHERE NOT forfeited AND remaining_jpy > 0
  AND (expires_at <= $1::timestamptz - $2::interval
       OR (NOT expiring_notified AND expires_at - $3::interval <= $1::timestamptz))
LIMIT $4
"""
_SAVE_ACCOUNTS = """
UPDATE accounts a SET
    plan = u.plan, opened = u.opened, overdraft_jpy = u.overdraft_jpy,
    postpay_due_jpy = u.postpay_due_jpy, postpay_since = u.postpay_since,
    contract_id = u.contract_id, reminder_enabled = u.reminder_enabled,
    reminder_threshold_jpy = u.reminder_threshold_jpy, reminder_email = u.reminder_email,
    balance_jpy = u.balance_jpy, version = u.version, as_of = u.as_of, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[], $5::bigint[], $6::timestamptz[],
            $7::text[], $8::bool[], $9::bigint[], $10::text[], $11::bigint[], $12::bigint[],
            $13::timestamptz[])
    AS u(account_id, plan, opened, overdraft_jpy, postpay_due_jpy, postpay_since, contract_id,
         reminder_enabled, reminder_threshold_jpy, reminder_email, balance_jpy, version, as_of)
WHERE a.account_id = u.account_id
"""
_SAVE_LOTS = """
INSERT INTO lots (lot_id, account_id, source, amount_jpy, remaining_jpy, forfeited_jpy,
                  granted_at, expires_at, forfeited, expiring_notified, partition)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::timestamptz[], $8::timestamptz[], $9::bool[], $10::bool[],
                     $11::int[])
ON CONFLICT (lot_id, partition) DO UPDATE SET
    remaining_jpy = EXCLUDED.remaining_jpy, forfeited_jpy = EXCLUDED.forfeited_jpy,
    forfeited = EXCLUDED.forfeited, expiring_notified = EXCLUDED.expiring_notified
"""
_UPDATE_LOTS = """
UPDATE lots l SET
    remaining_jpy = u.remaining_jpy, forfeited_jpy = u.forfeited_jpy,
    forfeited = u.forfeited, expiring_notified = u.expiring_notified
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::bool[])
    AS u(lot_id, remaining_jpy, forfeited_jpy, forfeited, expiring_notified)
WHERE l.lot_id = u.lot_id
"""
_SAVE_INVOICES = """
UPDATE invoices i SET paid_jpy = u.paid_jpy
FROM unnest($1::text[], $2::bigint[]) AS u(invoice_id, paid_jpy)
WHERE i.invoice_id = u.invoice_id
"""
_LOAD_USAGE = """
SELECT d.account_id, d.day, d.amount_jpy
FROM usage_daily d
JOIN unnest($1::text[], $2::date[]) AS s(account_id, since)
  ON d.account_id = s.account_id AND d.day >= s.since
"""
# Rows come sorted by key, and the accounts are locked: concurrent batches never deadlock here.
_SAVE_USAGE = """
INSERT INTO usage_daily (account_id, day, amount_jpy, partition)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::int[])
ON CONFLICT (account_id, day, partition)
    DO UPDATE SET amount_jpy = usage_daily.amount_jpy + EXCLUDED.amount_jpy
"""
_SAVE_OUTBOX = """
INSERT INTO outbox (message_id, topic, key, payload, conflatable)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::boolean[])
ON CONFLICT (message_id) DO NOTHING
"""
# Conflation (docs/adr/0003): the snapshot a new one replaces (the account's snapshot of its
# version before the batch) is dropped if no relay has numbered it yet, looked up by its
# message id (unique index), so the cost follows the batch, never the backlog. A row the relay
# is numbering is skipped, never waited for (the relay may be waiting for a row this batch
# holds: no deadlock), and `relay_seq IS NULL` is checked again on the row's newest version
# when it is locked: a numbered row, which may be in the output log already, is never
# deleted. Only rows written as conflatable (snapshots) qualify. The relay numbers only rows
# still there, so a deleted one is never published.
_CONFLATE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE message_id = ANY($1::text[])
      AND conflatable AND sent_at IS NULL AND failed_at IS NULL AND relay_seq IS NULL
    FOR UPDATE SKIP LOCKED
)
"""


async def write_outbox(
    conn: asyncpg.Connection | PoolConnectionProxy, messages: Sequence[OutboxMessage]
) -> None:
    """Queue `messages` for the relay, dropping the unpublished snapshots they supersede."""
    if not messages:
        return
    replaced = sorted({m.replaces for m in messages if m.replaces is not None})
    if replaced:
        await conn.execute(_CONFLATE, replaced)
    await conn.execute(
        _SAVE_OUTBOX,
        [m.message_id for m in messages],
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [m.conflatable for m in messages],
    )


def _account(row: asyncpg.Record) -> Account:
    return Account(
        account_id=row["account_id"],
        plan=row["plan"],
        opened=row["opened"],
        overdraft_jpy=row["overdraft_jpy"],
        postpay_due_jpy=row["postpay_due_jpy"],
        postpay_since=row["postpay_since"],
        contract_id=row["contract_id"],
        reminder_enabled=row["reminder_enabled"],
        reminder_threshold_jpy=row["reminder_threshold_jpy"],
        reminder_email=row["reminder_email"],
        version=row["version"],
        as_of=row["as_of"],
    )


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows turned into one list per column, the arrays `unnest` takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def _account_values(row: asyncpg.Record) -> tuple[Any, ...]:
    """The stored columns in the order `_save_accounts` compares and writes them."""
    return (
        row["account_id"],
        row["plan"],
        row["opened"],
        row["overdraft_jpy"],
        row["postpay_due_jpy"],
        row["postpay_since"],
        row["contract_id"],
        row["reminder_enabled"],
        row["reminder_threshold_jpy"],
        row["reminder_email"],
        row["balance_jpy"],
        row["version"],
        row["as_of"],
    )


def _lot(row: asyncpg.Record) -> Lot:
    return Lot(
        lot_id=row["lot_id"],
        amount_jpy=row["amount_jpy"],
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
        source=row["source"],
        remaining_jpy=row["remaining_jpy"],
        forfeited_jpy=row["forfeited_jpy"],
        forfeited=row["forfeited"],
        expiring_notified=row["expiring_notified"],
        dirty=False,
    )


async def load_account(
    conn: asyncpg.Connection, account_id: str, usage_since: date
) -> Account | None:
    """One account with its open lots and its daily usage from `usage_since` on, unlocked."""
    row = await conn.fetchrow("SELECT * FROM accounts WHERE account_id = $1", account_id)
    if row is None:
        return None
    account = _account(row)
    account.lots = [_lot(r) for r in await conn.fetch(_LOAD_LOTS, [account_id])]
    usage = await PgUnitOfWork(conn).load_usage({account_id: usage_since})
    account.usage_by_day = usage.get(account_id, {})
    return account


class PgUnitOfWork:
    """The service layer's UnitOfWork on one connection inside one transaction."""

    def __init__(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        self.conn = conn
        # What the database holds for the accounts and lots loaded here: `save` writes an
        # account only when it changed, and updates stored lots instead of upserting them.
        self.stored_accounts: dict[str, tuple[Any, ...]] = {}
        self.stored_lots: set[str] = set()
        self.created: set[str] = set()
        # Each locked account's input partition: written on every row written for it.
        self.partitions: dict[str, int] = {}

    async def lock_accounts(
        self, account_ids: Sequence[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, Account]:
        if not account_ids:
            return {}
        ids = list(account_ids)
        known = partitions or {}
        rows = await self.conn.fetch(_LOCK_ACCOUNTS, ids)
        if len(rows) < len(ids):
            # Accounts seen for the first time: created here, then locked with the others.
            found = {row["account_id"] for row in rows}
            new = [a for a in ids if a not in found]
            created = await self.conn.fetch(
                "INSERT INTO accounts (account_id, partition)"
                " SELECT * FROM unnest($1::text[], $2::int[])"
                " ON CONFLICT DO NOTHING RETURNING account_id",
                new,
                [known.get(a, UNKNOWN_PARTITION) for a in new],
            )
            self.created.update(row["account_id"] for row in created)
            rows = await self.conn.fetch(_LOCK_ACCOUNTS, ids)
        rows = await self._learn_partitions(rows, known)
        self.partitions.update((row["account_id"], row["partition"]) for row in rows)
        accounts = {row["account_id"]: _account(row) for row in rows}
        self.stored_accounts.update((row["account_id"], _account_values(row)) for row in rows)
        for row in await self.conn.fetch(_LOAD_LOTS, ids):
            accounts[row["account_id"]].lots.append(_lot(row))
            self.stored_lots.add(row["lot_id"])
        for row in await self.conn.fetch(_LOAD_INVOICES, ids):
            accounts[row["account_id"]].invoices[row["invoice_id"]] = OpenInvoice(
                row["invoice_id"], row["total_jpy"], row["paid_jpy"]
            )
        return accounts

    async def _learn_partitions(
        self, rows: list[asyncpg.Record], known: Mapping[str, int]
    ) -> list[asyncpg.Record]:
        """Accounts stored before their partition was recorded get it from their records."""
        late = [
            (row["account_id"], known[row["account_id"]])
            for row in rows
            if row["partition"] == UNKNOWN_PARTITION and row["account_id"] in known
        ]
        if not late:
            return rows
        await self.conn.execute(
            "UPDATE accounts a SET partition = u.partition"
            " FROM unnest($1::text[], $2::int[]) AS u(account_id, partition)"
            " WHERE a.account_id = u.account_id",
            *_columns(late),
        )
        return list(await self.conn.fetch(_LOCK_ACCOUNTS, [row["account_id"] for row in rows]))

    def _partition(self, account_id: str) -> int:
        """The partition of an account locked here. Rows of any other account are refused:
        with no foreign key on the per-charge tables (migration 0009) this is what keeps every
        row's (account_id, partition) that of an existing account."""
        try:
            return self.partitions[account_id]
        except KeyError:
            raise AccountNotLocked(account_id) from None

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        if not keys:
            return {}
        charges = [CHARGE_PREFIX + event_id for source, event_id in keys if source == "usage"]
        accounts = [event_id for source, event_id in keys if source == "account"]
        found: dict[EventKey, bytes] = {}
        before: list[str] = []
        start = len(CHARGE_PREFIX)
        for row in await self.conn.fetch(_SEEN, charges, accounts):
            if row["source"] == "account":
                found[("account", row["event_id"])] = bytes(row["fingerprint"])
            elif row["fingerprint"] is None:
                before.append(row["event_id"][start:])
            else:
                found[("usage", row["event_id"][start:])] = bytes(row["fingerprint"])
        if before:
            for row in await self.conn.fetch(_SEEN_BEFORE_0011, before):
                found[("usage", row["event_id"])] = bytes(row["fingerprint"])
        return found

    async def load_usage(self, since: Mapping[str, date]) -> dict[str, dict[date, int]]:
        if not since:
            return {}
        usage: dict[str, dict[date, int]] = {}
        for row in await self.conn.fetch(_LOAD_USAGE, list(since), list(since.values())):
            usage.setdefault(row["account_id"], {})[row["day"]] = row["amount_jpy"]
        return usage

    async def accounts_due_for_expiry(
        self, cutoff: datetime, lateness: timedelta, notice: timedelta, limit: int
    ) -> list[str]:
        rows = await self.conn.fetch(_DUE, cutoff, lateness, notice, limit)
        return sorted(row["account_id"] for row in rows)

    async def save(self, changes: Changes) -> None:
        await self._save_accounts(changes.accounts)
        await self._save_ledger(changes, changes.usage_by_charge())
        processed = [d for d in changes.processed if d.record.source != "usage"]
        if processed:
            await self.conn.copy_records_to_table(
                "processed_events",
                columns=[
                    "source",
                    "event_id",
                    "fingerprint",
                    "account_id",
                    "topic",
                    "partition",
                    "offset",
                ],
                records=[
                    (
                        d.record.source,
                        d.command.event_id,
                        d.fingerprint,
                        d.command.account_id,
                        d.record.topic,
                        d.record.partition,
                        d.record.offset,
                    )
                    for d in processed
                ],
            )
        await write_outbox(self.conn, changes.outbox)

    async def _save_accounts(self, accounts: list[Account]) -> None:
        if not accounts:
            return
        changed: list[tuple[Any, ...]] = []
        lots: list[tuple[Any, ...]] = []
        updated_lots: list[tuple[Any, ...]] = []
        invoices: list[OpenInvoice] = []
        for a in accounts:
            values = (
                a.account_id,
                a.plan,
                a.opened,
                a.overdraft_jpy,
                a.postpay_due_jpy,
                a.postpay_since,
                a.contract_id,
                a.reminder_enabled,
                a.reminder_threshold_jpy,
                a.reminder_email,
                a.balance_jpy,
                a.version,
                a.as_of,
            )
            if self.stored_accounts.get(a.account_id) != values:
                changed.append(values)
            self._dirty_lots(a, lots, updated_lots)
            invoices += [i for i in a.invoices.values() if i.dirty]
        if changed:
            await self.conn.execute(_SAVE_ACCOUNTS, *_columns(changed))
        if updated_lots:
            await self.conn.execute(_UPDATE_LOTS, *_columns(updated_lots))
        if lots:
            await self.conn.execute(_SAVE_LOTS, *_columns(lots))
        if invoices:
            await self.conn.execute(
                _SAVE_INVOICES, [i.invoice_id for i in invoices], [i.paid_jpy for i in invoices]
            )

    def _dirty_lots(
        self, a: Account, new: list[tuple[Any, ...]], stored: list[tuple[Any, ...]]
    ) -> None:
        """Changed lots: stored ones as an update of their balances, new ones whole."""
        for lot in a.lots:
            if not lot.dirty:
                continue
            if lot.lot_id in self.stored_lots:
                stored.append(
                    (
                        lot.lot_id,
                        lot.remaining_jpy,
                        lot.forfeited_jpy,
                        lot.forfeited,
                        lot.expiring_notified,
                    )
                )
            else:
                new.append(
                    (
                        lot.lot_id,
                        a.account_id,
                        lot.source,
                        lot.amount_jpy,
                        lot.remaining_jpy,
                        lot.forfeited_jpy,
                        lot.granted_at,
                        lot.expires_at,
                        lot.forfeited,
                        lot.expiring_notified,
                        self._partition(a.account_id),
                    )
                )

    async def _save_ledger(self, changes: Changes, usage: Mapping[str, Decoded]) -> None:
        """The ledger entries; a charge carries its usage event's fingerprint and offset, which
        make it the event's de-duplication record (migration 0011)."""
        effects = changes.effects
        records = []
        for e in effects.ledger:
            event = usage.get(e.entry_id) if e.kind == "charge" else None
            records.append(
                (
                    e.entry_id,
                    e.account_id,
                    e.kind,
                    e.amount_jpy,
                    e.balance_after_jpy,
                    e.occurred_at,
                    e.ref,
                    orjson.dumps(
                        [{"lot_id": lot, "amount_jpy": n} for lot, n in e.allocations]
                    ).decode(),
                    self._partition(e.account_id),
                    None if event is None else event.fingerprint,
                    None if event is None else event.record.offset,
                )
            )
        if records:
            await self.conn.copy_records_to_table(
                "ledger_entries",
                columns=[
                    "entry_id",
                    "account_id",
                    "kind",
                    "amount_jpy",
                    "balance_after_jpy",
                    "occurred_at",
                    "ref",
                    "allocations",
                    "partition",
                    "fingerprint",
                    "input_offset",
                ],
                records=records,
            )
        if effects.usage:
            rows = sorted(effects.usage.items())
            await self.conn.execute(
                _SAVE_USAGE,
                [key[0] for key, _ in rows],
                [key[1] for key, _ in rows],
                [amount for _, amount in rows],
                [self._partition(key[0]) for key, _ in rows],
            )
        if effects.postpay:
            await self.conn.copy_records_to_table(
                "postpay_usage",
                columns=[
                    "event_id",
                    "account_id",
                    "period",
                    "occurred_at",
                    "country",
                    "unit_price_jpy",
                    "segments",
                    "amount_jpy",
                    "from_lots_jpy",
                    "partition",
                ],
                records=[
                    (
                        p.event_id,
                        p.account_id,
                        p.period,
                        p.occurred_at,
                        p.country,
                        p.unit_price_jpy,
                        p.segments,
                        p.amount_jpy,
                        p.from_lots_jpy,
                        self._partition(p.account_id),
                    )
                    for p in effects.postpay
                ],
            )


_UNINVOICED = """
SELECT * FROM postpay_usage WHERE invoice_id IS NULL AND period <= $1
ORDER BY account_id, occurred_at, event_id
"""
_SAVE_INVOICE_ROWS = """
INSERT INTO invoices (invoice_id, account_id, period, total_jpy, issued_at, due_date, partition)
SELECT u.invoice_id, u.account_id, $1, u.total_jpy, $2, u.due_date, a.partition
FROM unnest($3::text[], $4::text[], $5::bigint[], $6::date[])
    AS u(invoice_id, account_id, total_jpy, due_date)
JOIN accounts a ON a.account_id = u.account_id
"""
# Only the rows the invoices were built from: usage the stream committed after the close read
# them is on no invoice line, and belongs on the next invoice.
_LINK_USAGE = """
UPDATE postpay_usage p SET invoice_id = u.invoice_id
FROM unnest($1::text[], $2::text[]) AS u(account_id, invoice_id)
WHERE p.account_id = u.account_id AND p.invoice_id IS NULL AND p.period <= $3
  AND p.event_id = ANY($4::text[])
"""


class PgCloseUnitOfWork(PgUnitOfWork):
    """Month close on one connection inside one transaction."""

    read_event_ids: tuple[str, ...] = ()  # what uninvoiced_usage returned: what gets linked

    async def claim_month(self, period: str) -> bool:
        # Closes run one at a time, whatever their month: two closes of different months
        # would otherwise both read (and bill) the same earlier usage not yet on an invoice.
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", MONTH_CLOSE_LOCK_KEY)
        # A second closer of the same month then finds its row and publishes nothing.
        row = await self.conn.fetchrow(
            "INSERT INTO month_closes (period, invoices) VALUES ($1, 0)"
            " ON CONFLICT (period) DO NOTHING RETURNING period",
            period,
        )
        return row is not None

    async def uninvoiced_usage(self, period: str) -> list[PostpayCharge]:
        usage = [
            PostpayCharge(
                event_id=r["event_id"],
                account_id=r["account_id"],
                occurred_at=r["occurred_at"],
                period=r["period"],
                country=r["country"],
                unit_price_jpy=r["unit_price_jpy"],
                segments=r["segments"],
                amount_jpy=r["amount_jpy"],
                from_lots_jpy=r["from_lots_jpy"],
            )
            for r in await self.conn.fetch(_UNINVOICED, period)
        ]
        self.read_event_ids = tuple(u.event_id for u in usage)
        return usage

    async def save_invoices(
        self,
        period: str,
        invoices: Sequence[Invoice],
        issued_at: datetime,
        outbox: Sequence[OutboxMessage],
    ) -> None:
        if invoices:
            await self.conn.execute(
                _SAVE_INVOICE_ROWS,
                period,
                issued_at,
                [i.invoice_id for i in invoices],
                [i.account_id for i in invoices],
                [i.total_jpy for i in invoices],
                [i.due_date for i in invoices],
            )
            await self.conn.execute(
                _LINK_USAGE,
                [i.account_id for i in invoices],
                [i.invoice_id for i in invoices],
                period,
                list(self.read_event_ids),
            )
        await self.conn.execute(
            "UPDATE month_closes SET invoices = $2 WHERE period = $1", period, len(invoices)
        )
        await write_outbox(self.conn, outbox)


class PgStore:
    """Hands out units of work from a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[PgUnitOfWork]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PgUnitOfWork(conn)

    @asynccontextmanager
    async def close_unit_of_work(self) -> AsyncIterator[PgCloseUnitOfWork]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PgCloseUnitOfWork(conn)

    async def is_closed(self, period: str) -> bool:
        async with self.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM month_closes WHERE period = $1)", period
                )
            )

    async def mark_end_offsets(self, period: str, end_offsets: dict[str, int]) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO month_close_marks (period, end_offsets) VALUES ($1, $2)"
                " ON CONFLICT (period) DO NOTHING",
                period,
                orjson.dumps(end_offsets).decode(),
            )
            mark: dict[str, int] = orjson.loads(
                await conn.fetchval(
                    "SELECT end_offsets FROM month_close_marks WHERE period = $1", period
                )
            )
        return mark

    async def oldest_uninvoiced_period(self) -> str | None:
        async with self.pool.acquire() as conn:
            oldest: str | None = await conn.fetchval(
                "SELECT min(period) FROM postpay_usage WHERE invoice_id IS NULL"
            )
        return oldest

    async def closed_periods(self, periods: Sequence[str]) -> set[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT period FROM month_closes WHERE period = ANY($1::text[])", list(periods)
            )
        return {row["period"] for row in rows}
