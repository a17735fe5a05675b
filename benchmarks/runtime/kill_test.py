"""SIGKILL (or SIGTERM) in the middle of a batch: is the Kafka commit ever AHEAD of the "database"?

For each runtime, R times: start the consumer (fresh group, per-batch sleep
emulating a 200 ms DB transaction, offsets journalled + fsync'ed at the end
of each batch), wait a random 1-8 s, then wait for a batch to be *open*
(journal's last record is BEGIN) and SIGKILL the process a random 0-150 ms
into that batch's "DB work".  Then compare the group's committed offsets
(read with a consumer's committed(), the group being dead) with the journal.

    .venv/bin/python benchmarks/runtime/kill_test.py --topic adr-bench --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

from common import committed_offsets, read_offset_db

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable

VARIANTS = {
    "aiokafka-getmany": ["plain_loop.py"],
    "faust-take (commit interval 2.8 s, default)": ["faust_agent.py"],
    "faust-take (commit interval 0.05 s)": ["faust_agent.py", "--commit-interval", "0.05"],
}


def last_record(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return ""
    lines = data.splitlines()
    return lines[-1].decode() if lines else ""


def n_commits(path: str) -> int:
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.startswith("C "))
    except FileNotFoundError:
        return 0


def one(
    topic: str,
    name: str,
    argv: list,
    sleep_ms: float,
    rng: random.Random,
    sig: int = signal.SIGKILL,
) -> dict:
    group = f"adr-kill-{uuid.uuid4().hex[:8]}"
    journal = f"/tmp/adr-kill-{group}.journal"
    cmd = [
        PY,
        os.path.join(HERE, argv[0]),
        *argv[1:],
        "--topic",
        topic,
        "--group",
        group,
        "--sleep-ms",
        str(sleep_ms),
        "--db",
        journal,
        "--forever",
    ]
    if argv[0] == "faust_agent.py":
        cmd += ["--api", "take_events"]
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while n_commits(journal) < 1:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name}: no batch committed (rc={proc.poll()})")
            time.sleep(0.02)
        time.sleep(rng.uniform(1.0, 8.0))
        # wait for the current batch (if any) to close and the next one to
        # open, then kill inside that batch's "DB work"
        while not last_record(journal).startswith("C "):
            time.sleep(0.002)
        while not last_record(journal).startswith("B "):
            time.sleep(0.002)
        delay = rng.uniform(0.0, 0.15)
        time.sleep(delay)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db, mid_batch, commits = read_offset_db(journal)
    kafka = asyncio.run(committed_offsets(group, topic))
    parts = sorted(set(db) | set(kafka))
    ahead = {p: (kafka.get(p, 0), db.get(p, 0)) for p in parts if kafka.get(p, 0) > db.get(p, 0)}
    behind = {p: db.get(p, 0) - kafka.get(p, 0) for p in parts if kafka.get(p, 0) < db.get(p, 0)}
    return {
        "runtime": name,
        "signal": signal.Signals(sig).name,
        "group": group,
        "kill_ms_into_batch": round(delay * 1000),
        "killed_mid_batch": mid_batch,
        "db_batches_committed": commits,
        "db_next_offsets": db,
        "kafka_committed": kafka,
        "kafka_ahead_of_db_partitions": ahead,
        "redelivered_on_restart": sum(behind.values()),
        "verdict": "LOSS (Kafka ahead of DB)"
        if ahead
        else ("redelivery only" if behind else "equal"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="adr-bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sleep-ms", type=float, default=200)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--signal",
        default="KILL",
        choices=["KILL", "TERM"],
        help="TERM: graceful shutdown mid-batch instead of kill -9",
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    results = []
    for i in range(args.repeats):
        for name, argv in VARIANTS.items():
            res = one(
                args.topic, name, argv, args.sleep_ms, rng, getattr(signal, "SIG" + args.signal)
            )
            print(json.dumps(res), flush=True)
            results.append(res)
    print("summary:")
    for name in VARIANTS:
        rs = [r for r in results if r["runtime"] == name]
        print(
            json.dumps(
                {
                    "runtime": name,
                    "kills": len(rs),
                    "mid_batch": sum(r["killed_mid_batch"] for r in rs),
                    "kafka_ahead_of_db": sum(bool(r["kafka_ahead_of_db_partitions"]) for r in rs),
                    "redelivered": [r["redelivered_on_restart"] for r in rs],
                }
            ),
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "sleep_ms": args.sleep_ms,
                    "signal": args.signal,
                    "results": results,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
