"""The end-of-run comparison: the database and the output topics against the model."""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from chaos.model import EventKey, Expected, Position
from worker.adapters.digest import payload_digest_form
from worker.adapters.strays import stray_rows
from worker.domain.account import Account
from worker.domain.balance import balance_state
from worker.domain.events import LedgerEntry, ReminderDue
from worker.domain.invoicing import Invoice

View = dict[str, Any]
Published = dict[str, list[bytes]]  # message id -> every copy on the topic


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _ledger_view(e: LedgerEntry) -> list[Any]:
    return [
        e.kind,
        e.amount_jpy,
        e.balance_after_jpy,
        _iso(e.occurred_at),
        e.ref,
        [[lot, n] for lot, n in e.allocations],
    ]


def model_view(account: Account, entries: Iterable[LedgerEntry]) -> View:
    ledger = {e.entry_id: _ledger_view(e) for e in entries}
    return {
        "plan": account.plan,
        "opened": account.opened,
        "overdraft": account.overdraft_jpy,
        "postpay_due": account.postpay_due_jpy,
        "postpay_since": _iso(account.postpay_since),
        "contract_id": account.contract_id,
        "reminder": [
            account.reminder_enabled,
            account.reminder_threshold_jpy,
            account.reminder_email,
        ],
        "balance": account.balance_jpy,
        "lots": {
            lot.lot_id: [
                lot.source,
                lot.amount_jpy,
                lot.remaining_jpy,
                lot.forfeited_jpy,
                lot.forfeited,
                lot.expiring_notified,
                _iso(lot.granted_at),
                _iso(lot.expires_at),
            ]
            for lot in account.lots
        },
        "ledger_total": sum(v[1] for v in ledger.values()),
        "ledger": ledger,
    }


@dataclass
class Actual:
    """What the run left behind, read once at the end."""

    views: dict[str, View] = field(default_factory=dict)
    processed: dict[EventKey, Position] = field(default_factory=dict)
    processed_at: dict[EventKey, datetime] = field(default_factory=dict)
    processed_account: dict[EventKey, str] = field(default_factory=dict)
    last_processed_at: dict[str, datetime] = field(default_factory=dict)
    first_forfeit_at: dict[str, datetime] = field(default_factory=dict)
    postpay: dict[str, list[Any]] = field(default_factory=dict)
    invoices: dict[str, list[Any]] = field(default_factory=dict)
    outbox_unsent: int = 0
    outbox_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    reminders: Published = field(default_factory=dict)
    invoice_messages: Published = field(default_factory=dict)
    dead_letters: dict[Position, list[bytes]] = field(default_factory=dict)
    balances: dict[str, dict[str, Any]] = field(default_factory=dict)  # account -> newest
    strays: dict[str, int] = field(default_factory=dict)
    """Rows per table that name no account of their partition (worker.adapters.strays)."""


async def read_database(conn: asyncpg.Connection, out: Actual, usage_topic: str) -> None:
    """Everything the checks compare; `usage_topic` names where usage records came from (a
    charge entry, their record since migration 0011, keeps the partition and offset only)."""
    out.strays = await stray_rows(conn)
    for r in await conn.fetch("SELECT * FROM accounts"):
        out.views[r["account_id"]] = {
            "plan": r["plan"],
            "opened": r["opened"],
            "overdraft": r["overdraft_jpy"],
            "postpay_due": r["postpay_due_jpy"],
            "postpay_since": _iso(r["postpay_since"]),
            "contract_id": r["contract_id"],
            "reminder": [r["reminder_enabled"], r["reminder_threshold_jpy"], r["reminder_email"]],
            "balance": r["balance_jpy"],
            "lots": {},
            "ledger_total": 0,
            "ledger": {},
        }
    for r in await conn.fetch("SELECT * FROM lots"):
        out.views[r["account_id"]]["lots"][r["lot_id"]] = [
            r["source"],
            r["amount_jpy"],
            r["remaining_jpy"],
            r["forfeited_jpy"],
            r["forfeited"],
            r["expiring_notified"],
            _iso(r["granted_at"]),
            _iso(r["expires_at"]),
        ]
    for r in await conn.fetch("SELECT * FROM ledger_entries"):
        view = out.views[r["account_id"]]
        allocations = [[a["lot_id"], a["amount_jpy"]] for a in orjson.loads(r["allocations"])]
        view["ledger"][r["entry_id"]] = [
            r["kind"],
            r["amount_jpy"],
            r["balance_after_jpy"],
            _iso(r["occurred_at"]),
            r["ref"],
            allocations,
        ]
        view["ledger_total"] += r["amount_jpy"]
        if r["kind"] == "forfeit":
            first = out.first_forfeit_at.get(r["account_id"], r["recorded_at"])
            out.first_forfeit_at[r["account_id"]] = min(first, r["recorded_at"])
    for r in await conn.fetch("SELECT * FROM applied_events"):
        key = (r["source"], r["event_id"])
        if key in out.processed:
            # The same event recorded twice (two partitions, or both records): never expected.
            out.processed[key] = ("recorded twice", -1, -1)
            continue
        out.processed[key] = (r["topic"] or usage_topic, r["partition"], r["offset"])
        out.processed_at[key] = r["processed_at"]
        out.processed_account[key] = r["account_id"]
        last = out.last_processed_at.get(r["account_id"], r["processed_at"])
        out.last_processed_at[r["account_id"]] = max(last, r["processed_at"])
    for r in await conn.fetch("SELECT * FROM postpay_usage"):
        out.postpay[r["event_id"]] = [
            r["account_id"],
            r["period"],
            r["country"],
            r["unit_price_jpy"],
            r["segments"],
            r["amount_jpy"],
            r["from_lots_jpy"],
            r["invoice_id"],
        ]
    for r in await conn.fetch("SELECT * FROM invoices"):
        out.invoices[r["invoice_id"]] = [
            r["account_id"],
            r["period"],
            r["total_jpy"],
            r["paid_jpy"],
            r["due_date"].isoformat(),
        ]
    for r in await conn.fetch("SELECT message_id, topic, sent_at FROM outbox"):
        out.outbox_ids[r["topic"]].add(r["message_id"])
        out.outbox_unsent += r["sent_at"] is None


def index_outputs(
    records: Iterable[tuple[int, int, bytes | None, bytes | None]], id_field: str
) -> Published:
    out: Published = defaultdict(list)
    for _, _, _, value in records:
        assert value is not None
        out[str(orjson.loads(value)[id_field])].append(value)
    return dict(out)


def newest_balances(
    records: Iterable[tuple[int, int, bytes | None, bytes | None]],
) -> dict[str, dict[str, Any]]:
    """What a consumer of the compacted balance topic holds: per key, the highest version."""
    out: dict[str, dict[str, Any]] = {}
    for _, _, key, value in records:
        assert value is not None
        assert key is not None
        m = orjson.loads(value)
        if key.decode() != m["account_id"]:
            m = {**m, "key_mismatch": key.decode()}
        held = out.get(m["account_id"])
        if held is None or m["version"] > held["version"]:
            out[m["account_id"]] = m
    return out


def index_dead_letters(
    records: Iterable[tuple[int, int, bytes | None, bytes | None]],
) -> dict[Position, list[bytes]]:
    out: dict[Position, list[bytes]] = defaultdict(list)
    for _, _, _, value in records:
        assert value is not None
        m = orjson.loads(value)
        out[(m["source_topic"], m["source_partition"], m["source_offset"])].append(value)
    return dict(out)


@dataclass
class Report:
    """Every difference, by category; the run passes when there is none."""

    counts: Counter[str] = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)
    accounts: list[tuple[str, View, View]] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return sum(self.counts.values())

    def add(self, category: str, line: str) -> None:
        self.counts[category] += 1
        if len(self.lines) < 200:
            self.lines.append(f"[{category}] {line}")


def _diff(model: View, actual: View) -> tuple[View, View]:
    """Only the keys (and, inside lots and ledger, only the entries) that differ."""
    m_out: View = {}
    a_out: View = {}
    for key in sorted(set(model) | set(actual)):
        m, a = model.get(key), actual.get(key)
        if m == a:
            continue
        if isinstance(m, dict) and isinstance(a, dict):
            keys = sorted(k for k in set(m) | set(a) if m.get(k) != a.get(k))[:5]
            m_out[key] = {k: m.get(k) for k in keys}
            a_out[key] = {k: a.get(k) for k in keys}
        else:
            m_out[key], a_out[key] = m, a
    return m_out, a_out


def compare(
    expected: Expected,
    actual: Actual,
    inputs: dict[Position, bytes | None],
    topics: dict[str, str],
    keys: dict[Position, bytes | None] | None = None,
) -> Report:
    """Every difference; `keys` (the input records' keys), if given, are checked in the dead
    letters too."""
    report = Report()
    _accounts(expected, actual, report)
    _inputs(expected, actual, inputs, report, keys)
    _reminders(expected, actual, report)
    _invoices(expected, actual, report)
    _postpay(expected, actual, report)
    _outbox(expected, actual, topics, report)
    _balances(expected, actual, report)
    for table, count in sorted(actual.strays.items()):
        report.add("stray_rows", f"{count} rows of {table} name no account of their partition")
    return report


def _balance_fields(account: Account) -> dict[str, Any]:
    state = balance_state(account)
    expiry = state.next_expiry
    return {
        "account_id": state.account_id,
        "plan": state.plan,
        "balance": state.balance_jpy,
        "overdraft": state.overdraft_jpy,
        "postpay_due": state.postpay_due_jpy,
        "credit": state.credit_jpy,
        "next_expiry": None
        if expiry is None
        else {"expires_at": _iso(expiry.expires_at), "amount": expiry.amount_jpy},
        "status": state.status,
        "version": state.version,
    }


def _balances(expected: Expected, actual: Actual, report: Report) -> None:
    """The newest snapshot per account on the balance topic against the model's final state
    (`as_of` left out: within one batch the worker and the model may order ties apart)."""
    for account_id in sorted(set(expected.accounts) | set(actual.balances)):
        account = expected.accounts.get(account_id)
        want = None if account is None or account.version == 0 else _balance_fields(account)
        got = actual.balances.get(account_id)
        if got is not None:
            got = {k: v for k, v in got.items() if k != "as_of"}
            if got.get("next_expiry"):
                at = datetime.fromisoformat(got["next_expiry"]["expires_at"])
                got["next_expiry"] = {**got["next_expiry"], "expires_at": _iso(at)}
        if want != got:
            report.add("balances", f"{account_id}: model {want}, topic {got}")


def _accounts(expected: Expected, actual: Actual, report: Report) -> None:
    entries: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in expected.ledger.values():
        entries[entry.account_id].append(entry)
    for account_id in sorted(set(expected.accounts) | set(actual.views)):
        account = expected.accounts.get(account_id)
        model = {} if account is None else model_view(account, entries[account_id])
        real = actual.views.get(account_id, {})
        if real and real["ledger_total"] != real["balance"]:
            report.add(
                "ledger_sum",
                f"{account_id}: ledger sums to {real['ledger_total']}, "
                f"balance column says {real['balance']}",
            )
        if model != real:
            report.add("account", f"{account_id} differs from the model")
            m, a = _diff(model, real)
            report.accounts.append((account_id, m, a))


def _inputs(
    expected: Expected,
    actual: Actual,
    inputs: dict[Position, bytes | None],
    report: Report,
    keys: dict[Position, bytes | None] | None = None,
) -> None:
    """Each record applied exactly once (`applied_events`) or dead-lettered with its reason."""
    for key in sorted(set(expected.processed) | set(actual.processed)):
        want, got = expected.processed.get(key), actual.processed.get(key)
        if want != got:
            report.add("processed", f"{key}: model applies the record at {want}, worker {got}")
    for position in sorted(set(expected.dead) | set(actual.dead_letters)):
        code = expected.dead.get(position)
        copies = actual.dead_letters.get(position)
        if copies is None or code is None:
            report.add(
                "dlq",
                f"{position}: model says {code or 'applied'}, "
                f"DLQ has {len(copies or [])} letter(s)",
            )
            continue
        letter = orjson.loads(copies[0])
        original = base64.b64decode(letter["payload_base64"])
        value = inputs.get(position) or b""
        raw_key = letter.get("key_base64")
        letter_key = None if raw_key is None else base64.b64decode(raw_key)
        if letter["error_code"] != code or not letter["reason"]:
            report.add(
                "dlq",
                f"{position}: model {code}, worker {letter['error_code']} ({letter['reason']!r})",
            )
        elif original != value and not (
            # A value over 256 KiB: the dead letter keeps its start, the source keeps it whole.
            letter.get("payload_truncated")
            and len(original) < len(value)
            and value.startswith(original)
        ):
            report.add("dlq", f"{position}: the dead letter does not carry the original payload")
        elif keys is not None and letter_key != keys.get(position):
            report.add("dlq", f"{position}: the dead letter does not carry the original key")
    for position, applied in expected.duplicates.items():
        if position in actual.dead_letters:
            report.add("dlq", f"re-send {position} of {applied} was dead-lettered")


def _reminder_fields(r: ReminderDue) -> list[Any]:
    if r.kind == "credits_expiring":
        # Balance and amount are those at the sweep that announced it: timer-dependent.
        return [r.account_id, r.kind, r.lot_id]
    return [r.account_id, r.kind, r.lot_id, r.balance_jpy, r.threshold_jpy, r.email, r.amount_jpy]


def _published_fields(m: dict[str, Any]) -> list[Any]:
    if m["kind"] == "credits_expiring":
        return [m["account_id"], m["kind"], m["lot_id"]]
    return [
        m["account_id"],
        m["kind"],
        m["lot_id"],
        m["balance"],
        m["threshold"],
        m["email"],
        m["amount"],
    ]


def _reminders(expected: Expected, actual: Actual, report: Report) -> None:
    for rid in sorted(set(expected.reminders) | set(actual.reminders)):
        want = expected.reminders.get(rid)
        copies = actual.reminders.get(rid)
        if want is None or copies is None:
            report.add(
                "reminder", f"{rid}: expected={want is not None} published={len(copies or [])}"
            )
            continue
        got = _published_fields(orjson.loads(copies[0]))
        if got != _reminder_fields(want):
            report.add("reminder", f"{rid}: model {_reminder_fields(want)}, published {got}")


def _invoice_fields(i: Invoice) -> list[Any]:
    lines = [
        [x.description, x.country, x.unit_price_jpy, x.quantity, x.amount_jpy, x.period]
        for x in i.lines
    ]
    return [i.account_id, i.period, i.total_jpy, i.due_date.isoformat(), lines]


def _invoices(expected: Expected, actual: Actual, report: Report) -> None:
    for iid in sorted(set(expected.invoices) | set(actual.invoice_messages)):
        want = expected.invoices.get(iid)
        copies = actual.invoice_messages.get(iid)
        if want is None or copies is None:
            report.add(
                "invoice", f"{iid}: expected={want is not None} published={len(copies or [])}"
            )
            continue
        m = orjson.loads(copies[0])
        got = [
            m["account_id"],
            m["period"],
            m["total"],
            m["due_date"],
            [
                [
                    x["description"],
                    x["country"],
                    x["unit_price"],
                    x["quantity"],
                    x["amount"],
                    x["period"],
                ]
                for x in m["lines"]
            ],
        ]
        if got != _invoice_fields(want) or m["payment_method"] != "bank_deposit":
            report.add("invoice", f"{iid}: model {_invoice_fields(want)}, published {got}")
    for iid in sorted(set(expected.invoices) | set(actual.invoices)):
        inv = expected.invoices.get(iid)
        want_row = (
            None
            if inv is None
            else [
                inv.account_id,
                inv.period,
                inv.total_jpy,
                expected.paid.get(iid, 0),
                inv.due_date.isoformat(),
            ]
        )
        if want_row != actual.invoices.get(iid):
            report.add("invoice", f"{iid}: model row {want_row}, table {actual.invoices.get(iid)}")


def _postpay(expected: Expected, actual: Actual, report: Report) -> None:
    for event_id in sorted(set(expected.postpay) | set(actual.postpay)):
        item = expected.postpay.get(event_id)
        want = (
            None
            if item is None
            else [
                item[0].account_id,
                item[0].period,
                item[0].country,
                item[0].unit_price_jpy,
                item[0].segments,
                item[0].amount_jpy,
                item[0].from_lots_jpy,
                item[1],
            ]
        )
        if want != actual.postpay.get(event_id):
            report.add(
                "postpay_usage", f"{event_id}: model {want}, table {actual.postpay.get(event_id)}"
            )


def _outbox(expected: Expected, actual: Actual, topics: dict[str, str], report: Report) -> None:
    if actual.outbox_unsent:
        report.add("outbox", f"{actual.outbox_unsent} outbox row(s) never sent")
    wanted = {
        topics["reminders"]: set(expected.reminders),
        topics["invoices"]: set(expected.invoices),
        topics["dlq"]: {f"dlq:{t}:{p}:{o}" for t, p, o in expected.dead},
    }
    for topic, ids in wanted.items():
        got = actual.outbox_ids.get(topic, set())
        if got != ids:
            report.add(
                "outbox",
                f"{topic}: {len(ids - got)} expected row(s) missing, {len(got - ids)} unexpected",
            )
    published = {
        "reminders": actual.reminders,
        "invoices": actual.invoice_messages,
        "dlq": {f"{k}": v for k, v in actual.dead_letters.items()},
    }
    for name, messages in published.items():
        report.duplicates[name] = sum(len(c) - 1 for c in messages.values())
        for mid, copies in messages.items():
            if len(set(copies)) > 1:
                report.add(
                    "republished",
                    f"{name} {mid} was published with {len(set(copies))} different payloads",
                )


async def state_rows(conn: asyncpg.Connection, roles: dict[str, str]) -> dict[str, Any]:
    """The rows the state digest covers, keyed for a comparison of two runs: ledger entries
    and lots by id, accounts, and outbox payloads (digest form) by message id with the topic
    names replaced by their roles (balance snapshots: only the newest per account)."""
    out: dict[str, Any] = {}
    for r in await conn.fetch(
        "SELECT entry_id, kind, amount_jpy, balance_after_jpy, allocations::text AS a"
        " FROM ledger_entries"
    ):
        out[f"ledger {r['entry_id']}"] = (
            r["kind"],
            r["amount_jpy"],
            r["balance_after_jpy"],
            r["a"],
        )
    for r in await conn.fetch("SELECT * FROM lots"):
        out[f"lot {r['lot_id']}"] = (r["remaining_jpy"], r["forfeited_jpy"], r["forfeited"])
    for r in await conn.fetch("SELECT * FROM accounts"):
        out[f"account {r['account_id']}"] = (r["balance_jpy"], r["version"], str(r["as_of"]))
    snapshots: dict[str, tuple[int, bytes]] = {}
    for r in await conn.fetch("SELECT message_id, topic, payload FROM outbox"):
        role = roles.get(r["topic"], r["topic"])
        body = payload_digest_form(bytes(r["payload"]), roles)
        mid = str(r["message_id"])
        if mid.startswith("dlq:"):
            topic, _, rest = mid.removeprefix("dlq:").partition(":")
            mid = "dlq:" + roles.get(topic, topic) + ":" + rest
        if role == "balances":
            version = int(orjson.loads(body)["version"])
            account = mid.split(":")[0]
            if account not in snapshots or version > snapshots[account][0]:
                snapshots[account] = (version, body)
            continue
        out[f"{role} {mid}"] = body
    for account, (_, body) in snapshots.items():
        out[f"balances {account}"] = body
    return out


def state_differences(a: dict[str, Any], b: dict[str, Any], limit: int = 20) -> list[str]:
    """Where two runs' states differ (`state_rows` of each), at most `limit` lines."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [f"{k}: {_clip(a.get(k))} | {_clip(b.get(k))}" for k in keys[:limit]] + (
        [f"... {len(keys) - limit} more"] if len(keys) > limit else []
    )


def _clip(value: Any, limit: int = 300) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
