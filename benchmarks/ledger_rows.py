"""What the rows a usage event writes cost PostgreSQL, by schema variant (issue 14, lever c).

Writes the per-event rows of the worker's batch transaction the way `PgUnitOfWork.save` does
(COPY, one transaction per batch) into fresh databases, and reads the CPU of the server
process that did it from /proc. Variants:

- `0010`: a charge entry and a `processed_events` row per usage event (before migration 0011);
- `0011`: the charge entry alone, carrying fingerprint and input offset;
- `0011-no-account-index`: the same without `ledger_by_account`, to price that index.

    python -m benchmarks.ledger_rows --events 200000 --batch 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from benchmarks.kit import Services, cpu_seconds
from worker.adapters.migrate import create_database, drop_database, migration_files

VARIANTS = ("0010", "0011", "0011-no-account-index")
LEDGER = [
    "entry_id",
    "account_id",
    "kind",
    "amount_jpy",
    "balance_after_jpy",
    "occurred_at",
    "ref",
    "allocations",
    "partition",
]
PROCESSED = ["source", "event_id", "fingerprint", "account_id", "topic", "partition", "offset"]


async def _schema(conn: asyncpg.Connection, variant: str) -> None:
    for name, sql in migration_files():
        if variant == "0010" and name >= "0011":
            break
        await conn.execute(sql)
    if variant == "0011-no-account-index":
        await conn.execute("DROP INDEX ledger_by_account")


def _batches(events: int, batch: int, accounts: int, seed: int) -> list[list[dict[str, Any]]]:
    rnd = random.Random(seed)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for n in range(events):
        account = f"acc-{min(int(rnd.paretovariate(1.2)), accounts):05d}"
        event_id = str(uuid.UUID(int=rnd.getrandbits(128)))
        rows.append(
            {
                "event_id": event_id,
                "account_id": account,
                "partition": int(account[4:]) % 6,
                "at": at + timedelta(seconds=n),
                "fingerprint": hashlib.sha256(event_id.encode()).digest(),
                "offset": n,
                "allocations": orjson.dumps(
                    [{"lot_id": f"lot:buy-{account}", "amount_jpy": 10}]
                ).decode(),
            }
        )
    return [rows[i : i + batch] for i in range(0, len(rows), batch)]


async def _write(conn: asyncpg.Connection, variant: str, batch: list[dict[str, Any]]) -> None:
    new = variant != "0010"
    ledger = [
        (
            "charge:" + r["event_id"],
            r["account_id"],
            "charge",
            -10,
            -10,
            r["at"],
            r["event_id"],
            r["allocations"],
            r["partition"],
            *((r["fingerprint"], r["offset"]) if new else ()),
        )
        for r in batch
    ]
    async with conn.transaction():
        await conn.copy_records_to_table(
            "ledger_entries",
            columns=LEDGER + (["fingerprint", "input_offset"] if new else []),
            records=ledger,
        )
        if not new:
            await conn.copy_records_to_table(
                "processed_events",
                columns=PROCESSED,
                records=[
                    (
                        "usage",
                        r["event_id"],
                        r["fingerprint"],
                        r["account_id"],
                        "usage",
                        r["partition"],
                        r["offset"],
                    )
                    for r in batch
                ],
            )


async def _one(services: Services, variant: str, batches: list[list[dict[str, Any]]]) -> float:
    """Server CPU µs per event for writing every batch into a fresh database."""
    name = f"ledger_rows_{uuid.uuid4().hex[:8]}"
    url = await create_database(services.database_url, name, migrated=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            await _schema(conn, variant)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            start = cpu_seconds(pid)
            for batch in batches:
                await _write(conn, variant, batch)
            used = cpu_seconds(pid) - start
        finally:
            await conn.close()
    finally:
        await drop_database(services.database_url, name)
    return used / sum(len(b) for b in batches) * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    services = Services.from_env()
    batches = _batches(args.events, args.batch, args.accounts, args.seed)
    figures: dict[str, list[float]] = {v: [] for v in VARIANTS}
    started = time.monotonic()
    for _ in range(args.rounds):
        for variant in VARIANTS:  # alternating, so that the machine's load falls on each alike
            figures[variant].append(await _one(services, variant, batches))
    print(f"{args.events:,} events, batches of {args.batch:,}, {time.monotonic() - started:.0f} s")
    for variant, values in figures.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"{variant:24} server CPU µs/event: median {statistics.median(values):.1f} ({each})")


if __name__ == "__main__":
    asyncio.run(main())
