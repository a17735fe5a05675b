"""Plain aiokafka consume loop: getmany -> decode -> "DB work" -> commit offset+1.

    .venv/bin/python benchmarks/runtime/plain_loop.py --topic adr-bench \
        --group adr-plain-1 -n 200000 [--sleep-ms 5] [--db /tmp/x.journal]

Prints one JSON line with the throughput when it has consumed N messages.
With ``--db`` it records, per batch, the offsets "committed to the database"
(fsync'ed journal) BEFORE committing the same offsets to Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import orjson
from aiokafka import AIOKafkaConsumer
from common import BOOTSTRAP, OffsetDB


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="adr-bench")
    ap.add_argument("--group", required=True)
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--max-records", type=int, default=2000)
    ap.add_argument(
        "--sleep-ms", type=float, default=0.0, help="per-batch sleep emulating one DB transaction"
    )
    ap.add_argument("--db", default=None, help="offset journal (kill test)")
    ap.add_argument("--forever", action="store_true", help="do not stop at N (kill test)")
    args = ap.parse_args()

    db = OffsetDB(args.db) if args.db else None
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    t_start = time.perf_counter()
    await consumer.start()
    consumed = 0
    batches = 0
    t_first = None
    sleep_s = args.sleep_ms / 1000.0
    try:
        while True:
            records = await consumer.getmany(timeout_ms=1000, max_records=args.max_records)
            if not records:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            batches += 1
            if db:
                db.begin(batches)
            offsets = {}
            for tp, msgs in records.items():
                for m in msgs:
                    orjson.loads(m.value)
                offsets[tp] = msgs[-1].offset + 1
                consumed += len(msgs)
            if sleep_s:
                await asyncio.sleep(sleep_s)  # the "DB transaction"
            if db:
                db.commit(batches, {tp.partition: o for tp, o in offsets.items()})
            await consumer.commit(offsets)  # only after the DB commit
            if consumed >= args.n and not args.forever:
                break
    finally:
        t_end = time.perf_counter()
        await consumer.stop()
    print(
        json.dumps(
            {
                "runtime": "aiokafka-getmany",
                "group": args.group,
                "messages": consumed,
                "batches": batches,
                "sleep_ms": args.sleep_ms,
                "seconds": round(t_end - t_first, 3),
                "msgs_per_s": round(consumed / (t_end - t_first)),
                "seconds_incl_join": round(t_end - t_start, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
