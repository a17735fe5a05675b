"""Faust (faust-streaming 0.15.3) agent consuming in batches with stream.take().

    .venv/bin/python benchmarks/runtime/faust_agent.py --topic adr-bench \
        --group adr-faust-1 -n 200000 [--sleep-ms 5] [--db /tmp/x.journal]

Same work as plain_loop.py: decode every value with orjson, sleep per batch
("DB transaction"), and (with --db) journal the batch's next offsets per
partition.  Kafka commits are Faust's own: events are acked by take() and
committed by the consumer's commit timer (broker_commit_interval).
Prints one JSON line at N messages and exits (os._exit, no graceful stop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time

import faust
import orjson
from common import BOOTSTRAP, OffsetDB

ap = argparse.ArgumentParser()
ap.add_argument("--topic", default="adr-bench")
ap.add_argument("--group", required=True)
ap.add_argument("-n", type=int, default=200_000)
ap.add_argument("--take", type=int, default=2000)
ap.add_argument("--within", type=float, default=0.2)
ap.add_argument("--sleep-ms", type=float, default=0.0)
ap.add_argument("--db", default=None)
ap.add_argument("--forever", action="store_true")
ap.add_argument(
    "--commit-interval",
    type=float,
    default=None,
    help="broker_commit_interval (Faust default 2.8 s)",
)
ap.add_argument(
    "--api",
    choices=["take", "take_events"],
    default=None,
    help="take (values) or take_events (needed for offsets); "
    "default: take, or take_events with --db",
)
ap.add_argument(
    "--setting",
    action="append",
    default=[],
    help="extra faust setting name=int, e.g. stream_buffer_maxsize=16384",
)
args = ap.parse_args()

datadir = f"/tmp/adr-faust-data/{args.group}"
shutil.rmtree(datadir, ignore_errors=True)
os.makedirs(os.path.dirname(datadir), exist_ok=True)
settings = dict(
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    datadir=datadir,
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
)
for item in args.setting:
    name, value = item.split("=", 1)
    settings[name] = int(value)
if args.commit_interval is not None:
    settings["broker_commit_interval"] = args.commit_interval
app = faust.App(args.group, **settings)
topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
db = OffsetDB(args.db) if args.db else None
API = args.api or ("take_events" if args.db else "take")
state = {"consumed": 0, "batches": 0, "t_first": None}
T_START = time.perf_counter()


PROFILE = os.environ.get("ADR_PROFILE")  # path: dump cProfile stats there
if PROFILE:
    import cProfile

    _prof = cProfile.Profile()
    _prof.enable()


def report() -> None:
    if PROFILE:
        _prof.disable()
        _prof.dump_stats(PROFILE)
    t_end = time.perf_counter()
    dt = t_end - state["t_first"]
    # the Faust worker redirects sys.stdout into logging: write to fd 1.
    os.write(
        1,
        (
            json.dumps(
                {
                    "runtime": "faust-" + API,
                    "faust": faust.__version__,
                    "group": args.group,
                    "messages": state["consumed"],
                    "batches": state["batches"],
                    "sleep_ms": args.sleep_ms,
                    "seconds": round(dt, 3),
                    "msgs_per_s": round(state["consumed"] / dt),
                    "seconds_incl_join": round(t_end - T_START, 3),
                    "settings": args.setting,
                }
            )
            + "\n"
        ).encode(),
    )


@app.agent(topic)
async def process(stream):
    sleep_s = args.sleep_ms / 1000.0
    if API == "take":
        async for values in stream.take(args.take, within=args.within):
            if state["t_first"] is None:
                state["t_first"] = time.perf_counter()
            state["batches"] += 1
            for v in values:
                orjson.loads(v)
            state["consumed"] += len(values)
            if sleep_s:
                await asyncio.sleep(sleep_s)  # the "DB transaction"
            if state["consumed"] >= args.n and not args.forever:
                report()
                os._exit(0)
    async for events in stream.take_events(args.take, within=args.within):
        if state["t_first"] is None:
            state["t_first"] = time.perf_counter()
        state["batches"] += 1
        if db:
            db.begin(state["batches"])
        offsets = {}
        for ev in events:
            orjson.loads(ev.value)
            msg = ev.message
            offsets[msg.partition] = msg.offset + 1
        state["consumed"] += len(events)
        if sleep_s:
            await asyncio.sleep(sleep_s)  # the "DB transaction"
        if db:
            db.commit(state["batches"], offsets)
        if state["consumed"] >= args.n and not args.forever:
            report()
            os._exit(0)


if __name__ == "__main__":
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
