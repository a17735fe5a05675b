"""Run plain_loop.py and faust_agent.py R times each, per-batch sleep 0 and 5 ms,
on the same pre-filled topic with a fresh consumer group per run; print medians.

    .venv/bin/python benchmarks/runtime/produce.py --topic adr-bench -n 200000
    .venv/bin/python benchmarks/runtime/run_throughput.py --topic adr-bench -n 200000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable


def run(script: str, topic: str, n: int, sleep_ms: float, timeout: float) -> dict:
    group = f"adr-{script.split('.')[0].replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    cmd = [
        PY,
        os.path.join(HERE, script),
        "--topic",
        topic,
        "--group",
        group,
        "-n",
        str(n),
        "--sleep-ms",
        str(sleep_ms),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    for line in proc.stdout.splitlines()[::-1]:
        line = line[line.find("{") :]
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{cmd} rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="adr-bench")
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sleeps", default="0,5")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    results = []
    for sleep_ms in [float(s) for s in args.sleeps.split(",")]:
        for r in range(args.runs):
            for script in ("plain_loop.py", "faust_agent.py"):
                res = run(script, args.topic, args.n, sleep_ms, args.timeout)
                print(json.dumps(res), flush=True)
                results.append(res)
    summary = []
    for sleep_ms in sorted({r["sleep_ms"] for r in results}):
        row = {"sleep_ms": sleep_ms}
        for rt in ("aiokafka-getmany", "faust-take"):
            vals = [
                r["msgs_per_s"] for r in results if r["runtime"] == rt and r["sleep_ms"] == sleep_ms
            ]
            row[rt] = {"runs": vals, "median": statistics.median(vals)}
        row["faust_over_plain"] = round(
            row["faust-take"]["median"] / row["aiokafka-getmany"]["median"], 3
        )
        summary.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "nproc": os.cpu_count(),
                    "n": args.n,
                    "topic": args.topic,
                    "runs": results,
                    "summary": summary,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
