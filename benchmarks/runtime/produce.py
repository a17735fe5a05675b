"""Fill a topic with N JSON usage-like messages, keyed by account id.

.venv/bin/python benchmarks/runtime/produce.py --topic adr-bench -n 200000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiokafka import AIOKafkaProducer
from common import BOOTSTRAP, PARTITIONS, ensure_topic


def make_value(i: int, accounts: int) -> tuple[bytes, bytes]:
    account = f"acct-{i % accounts:05d}"
    value = {
        "event_id": f"u-{i:010d}",
        "account_id": account,
        "occurred_at": "2026-11-26T11:52:08.%06d+09:00" % (i % 1_000_000),
        "destination": "+8190%08d" % (i % 100_000_000),
        "country": "JP",
        "segments": 1 + i % 3,
        "message_id": f"m-{i:08d}",
    }
    return account.encode(), orjson.dumps(value)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="adr-bench")
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=PARTITIONS)
    args = ap.parse_args()

    await ensure_topic(args.topic, args.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        linger_ms=20,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    t0 = time.perf_counter()
    size = 0
    try:
        pending = []
        for i in range(args.n):
            key, value = make_value(i, args.accounts)
            size += len(value)
            pending.append(await producer.send(args.topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    dt = time.perf_counter() - t0
    print(
        f"produced {args.n} messages to {args.topic} "
        f"(avg value {size / args.n:.0f} B) in {dt:.2f}s = {args.n / dt:,.0f} msg/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
