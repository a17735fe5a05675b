"""One SHA-256 over everything billing produced, to compare two runs over one input log.

Covered, each in a stable order: ledger entries (by account, then entry id; every entry's
balance after and allocations pin the order it was applied in), lots, accounts, invoices and
outbox messages (by message id). Topic names, in a message's topic, a dead letter's id and its
source topic, are replaced by their role, so runs over differently named topics compare.
Of the balance snapshots (role `balances`) only the newest per account counts, what a reader
of the compacted topic holds: how many came before it depends on where batches ended.
Left out, because they are wall-clock or delivery facts, not billing:
`recorded_at`, `created_at`, `sent_at` and parking columns of rows, a dead letter's
`failed_at` and an invoice's `issued_at`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
import orjson

WALL_CLOCK_FIELDS = ("failed_at", "issued_at")

_QUERIES = (
    (
        "ledger",
        "SELECT account_id, entry_id, kind, amount_jpy, balance_after_jpy, occurred_at, ref,"
        " allocations::text AS allocations FROM ledger_entries ORDER BY account_id, entry_id",
    ),
    (
        "lots",
        "SELECT lot_id, account_id, source, amount_jpy, remaining_jpy, forfeited_jpy,"
        " granted_at, expires_at, forfeited, expiring_notified FROM lots ORDER BY lot_id",
    ),
    (
        "accounts",
        "SELECT account_id, plan, opened, overdraft_jpy, postpay_due_jpy, balance_jpy,"
        " reminder_enabled, reminder_threshold_jpy, version, as_of FROM accounts"
        " ORDER BY account_id",
    ),
    ("usage_daily", "SELECT * FROM usage_daily ORDER BY account_id, day"),
    (
        "invoices",
        "SELECT invoice_id, account_id, period, total_jpy, paid_jpy, due_date"
        " FROM invoices ORDER BY invoice_id",
    ),
)


def payload_digest_form(payload: bytes, roles: Mapping[str, str]) -> bytes:
    """The payload with wall-clock fields removed, topic names as roles, keys sorted."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if isinstance(body, dict):
        for name in WALL_CLOCK_FIELDS:
            body.pop(name, None)
        source = body.get("source_topic")
        if isinstance(source, str):
            body["source_topic"] = roles.get(source, source)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _message_id(message_id: str, roles: Mapping[str, str]) -> str:
    # Dead letters are named "dlq:<source topic>:<partition>:<offset>".
    kind, sep, rest = message_id.partition(":")
    if kind == "dlq" and sep:
        topic, _, position = rest.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        return f"dlq:{roles.get(topic, topic)}:{partition}:{position}"
    return message_id


def newest_snapshots(rows: Iterable[tuple[str, Any, bytes]]) -> set[str]:
    """Message ids of the highest `version` per key among (message id, key, payload) rows."""
    newest: dict[Any, tuple[int, str]] = {}
    for message_id, key, payload in rows:
        version = int(orjson.loads(payload)["version"])
        if key not in newest or version > newest[key][0]:
            newest[key] = (version, message_id)
    return {message_id for _, message_id in newest.values()}


def _row(row: asyncpg.Record) -> bytes:
    return orjson.dumps({k: str(v) for k, v in row.items()}, option=orjson.OPT_SORT_KEYS)


def _key_form(key: bytes | None) -> str | None:
    """A key as text: UTF-8 as it reads (as when keys were text), other bytes as base64."""
    if key is None:
        return None
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode("ascii")


async def state_digest(conn: asyncpg.Connection, roles: Mapping[str, str]) -> str:
    """Hex SHA-256 of the billing state; `roles` names each topic's role
    (e.g. {"bench-1-out.reminders": "reminders", "bench-1.usage": "usage"})."""
    sha = hashlib.sha256()
    for name, query in _QUERIES:
        sha.update(name.encode() + b"\n")
        for row in await conn.fetch(query):
            sha.update(_row(row) + b"\n")
    sha.update(b"outbox\n")
    rows = await conn.fetch(
        "SELECT message_id, topic, key, payload FROM outbox ORDER BY message_id"
    )
    snapshots = [r for r in rows if roles.get(r["topic"], r["topic"]) == "balances"]
    kept = newest_snapshots((r["message_id"], r["key"], bytes(r["payload"])) for r in snapshots)
    for row in rows:
        role = roles.get(row["topic"], row["topic"])
        if role == "balances" and row["message_id"] not in kept:
            continue
        message_id = _message_id(row["message_id"], roles)
        sha.update(orjson.dumps([message_id, role, _key_form(row["key"])]) + b"\n")
        sha.update(payload_digest_form(bytes(row["payload"]), roles) + b"\n")
    return sha.hexdigest()
