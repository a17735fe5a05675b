"""Read-only views for ops: one account's state as JSON-ready data and its table; the lag
table of `billing-worker lag`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.adapters.postgres import load_account
from worker.adapters.reach import connect_database
from worker.adapters.wire import wire_balance, wire_forecast
from worker.builders import policy_from
from worker.config import Settings
from worker.domain.balance import balance_state
from worker.domain.forecast import window_days
from worker.domain.invoicing import period_of


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


async def account_view(settings: Settings, account_id: str, entries: int) -> dict[str, Any] | None:
    """The account as `billing-worker account --json` prints it; None when unknown."""
    conn = await connect_database(settings)
    try:
        row = await conn.fetchrow("SELECT * FROM accounts WHERE account_id = $1", account_id)
        if row is None:
            return None
        now = datetime.now(UTC)
        policy = policy_from(settings)
        state = await load_account(conn, account_id, window_days(now, settings.zone)[-1])
        assert state is not None  # the row above exists and accounts are never deleted
        lots = await conn.fetch(
            "SELECT * FROM lots WHERE account_id = $1 ORDER BY expires_at, granted_at, lot_id",
            account_id,
        )
        ledger = await conn.fetch(
            "SELECT * FROM ledger_entries WHERE account_id = $1"
            " ORDER BY recorded_at DESC, entry_id DESC LIMIT $2",
            account_id,
            entries,
        )
        ledger_sum = await conn.fetchval(
            "SELECT coalesce(sum(amount_jpy), 0) FROM ledger_entries WHERE account_id = $1",
            account_id,
        )
        open_period = period_of(now, settings.zone)
        running = await conn.fetchval(
            "SELECT coalesce(sum(amount_jpy - from_lots_jpy), 0) FROM postpay_usage"
            " WHERE account_id = $1 AND invoice_id IS NULL AND period = $2",
            account_id,
            open_period,
        )
    finally:
        await conn.close()
    feed = wire_balance(balance_state(state)).model_dump(mode="json")
    return {
        "account_id": row["account_id"],
        "plan": row["plan"],
        "opened": row["opened"],
        "balance": int(ledger_sum),
        "overdraft": row["overdraft_jpy"],
        # The fields of its billing.balances.v1 snapshot, and the forecast as of now.
        "postpay_due": feed["postpay_due"],
        "credit": feed["credit"],
        "next_expiry": feed["next_expiry"],
        "status": feed["status"],
        "version": feed["version"],
        "as_of": feed["as_of"],
        "forecast": wire_forecast(state.forecast_at(now, policy)).model_dump(mode="json"),
        "postpay": {
            "since": _iso(row["postpay_since"]),
            "contract_id": row["contract_id"],
            "unpaid": row["postpay_due_jpy"],
            "open_period": open_period,
            "open_period_total": int(running),
        },
        "reminder": {
            "enabled": row["reminder_enabled"],
            "threshold": row["reminder_threshold_jpy"],
        },
        "lots": [
            {
                "lot_id": lot["lot_id"],
                "source": lot["source"],
                "amount": lot["amount_jpy"],
                "remaining": lot["remaining_jpy"],
                "forfeited": lot["forfeited_jpy"],
                "granted_at": _iso(lot["granted_at"]),
                "expires_at": _iso(lot["expires_at"]),
            }
            for lot in lots
        ],
        "ledger": [
            {
                "entry_id": e["entry_id"],
                "kind": e["kind"],
                "amount": e["amount_jpy"],
                "balance_after": e["balance_after_jpy"],
                "occurred_at": _iso(e["occurred_at"]),
            }
            for e in ledger
        ],
    }


def render_account(view: dict[str, Any]) -> None:
    console = Console()
    reminder = view["reminder"]
    console.print(
        f"[bold]{view['account_id']}[/bold]  plan={view['plan']}  balance=JPY {view['balance']}"
        f"  overdraft=JPY {view['overdraft']}  reminder="
        + (f"at JPY {reminder['threshold']}" if reminder["enabled"] else "off")
        + f"  status={view['status']}  version={view['version']}"
    )
    f = view["forecast"]
    console.print(
        f"forecast: JPY {f['usage_jpy_per_day']}/day  runs out on {f['runs_out_on'] or '-'}"
        f"  expiring unused JPY {f['expiring_unused_jpy']}"
        f"  suggested package JPY {f['suggested_package_jpy']}"
    )
    if view["plan"] == "postpay":
        p = view["postpay"]
        console.print(
            f"postpay since {p['since']}  unpaid=JPY {p['unpaid']}  "
            f"{p['open_period']} so far=JPY {p['open_period_total']}"
        )
    lots = Table("lot", "amount", "remaining", "forfeited", "granted", "expires", title="lots")
    for lot in view["lots"]:
        lots.add_row(
            lot["lot_id"],
            str(lot["amount"]),
            str(lot["remaining"]),
            str(lot["forfeited"]),
            lot["granted_at"],
            lot["expires_at"],
        )
    console.print(lots)
    ledger = Table("entry", "kind", "amount", "balance after", "occurred", title="latest entries")
    for e in view["ledger"]:
        ledger.add_row(
            e["entry_id"], e["kind"], str(e["amount"]), str(e["balance_after"]), e["occurred_at"]
        )
    console.print(ledger)


LAG_COLUMNS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "LAG-SECONDS",
)


def lag_table(report: Mapping[str, Any]) -> str:
    """The columns of `kafka-consumer-groups.sh --describe`, plus the time lag; `-` where
    nothing was committed (or the time lag is unknown), then the total."""

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    lines = [LAG_COLUMNS]
    for row in report["partitions"]:
        seconds = row["lag_seconds"]
        lines.append(
            (
                report["group"],
                row["topic"],
                str(row["partition"]),
                cell(row["committed"]),
                str(row["end"]),
                str(row["lag"]),
                cell(None if seconds is None else f"{seconds:.1f}"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(LAG_COLUMNS))]
    text = [
        " ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join([*text, f"total lag: {report['total']}"])
