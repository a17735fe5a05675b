"""Known faust-streaming hazards, checked against the installed version.

Each case: a fresh 6-partition topic ``adr-hz-<case>-<id>``, M messages
produced to partition 0 (value = its index), a Faust worker subprocess
(commit interval 0.2 s) that logs what it starts/finishes, SIGKILL after a
few seconds, then the group's committed offset on partition 0 is read and
compared with what the agent actually finished.

    .venv/bin/python benchmarks/runtime/hazards.py exception
    .venv/bin/python benchmarks/runtime/hazards.py exception_last
    .venv/bin/python benchmarks/runtime/hazards.py take_exception
    .venv/bin/python benchmarks/runtime/hazards.py noack_take_exception
    .venv/bin/python benchmarks/runtime/hazards.py concurrency        # issue 606 (precommitted group)
    .venv/bin/python benchmarks/runtime/hazards.py concurrency_fresh  # same, group with no commit yet

Cases:
  exception            `async for ev in stream.events()`, raises on offset 5.
  exception_last       same, raises on offset 9, the last message (so no later ack
                       can explain a commit past it: the raising message itself was acked).
  take_exception       `stream.take_events(5, within=0.5)` (same code path as take()),
                       raises on the second and last batch (offsets 5-9).
  noack_take_exception `stream.noack_take(5, within=0.5)`, acks each batch by hand
                       after the body; raises on the batch holding offsets 5-9 (of 0-14).
  concurrency          agent concurrency=2, group precommitted at offset 10; offset 10
                       takes 30 s, the others 0.1 s (faust-streaming issue 606).
  concurrency_fresh    as above without the precommit; offset 0 is the slow one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import BOOTSTRAP, committed_offsets, ensure_topic  # noqa: E402

CASES = {
    # case: (messages, run seconds, precommit offset or None)
    "exception": (10, 6, None),
    "exception_last": (10, 6, None),
    "take_exception": (10, 6, None),
    "noack_take_exception": (15, 20, None),
    "concurrency": (20, 8, 10),
    "concurrency_fresh": (10, 8, None),
}


# --------------------------------------------------------------------- worker
def worker(case: str, topic: str, group: str, log_path: str) -> None:
    import faust

    app = faust.App(
        group,
        broker=f"kafka://{BOOTSTRAP}",
        store="memory://",
        datadir=f"/tmp/adr-faust-data/{group}",
        web_enabled=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.2,
    )
    os.makedirs("/tmp/adr-faust-data", exist_ok=True)
    t = app.topic(topic, key_serializer="raw", value_serializer="raw")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(kind: str, offsets) -> None:
        os.write(
            fd,
            (
                json.dumps({"t": round(time.time(), 3), "kind": kind, "offsets": list(offsets)})
                + "\n"
            ).encode(),
        )

    if case in ("exception", "exception_last"):
        bad = 5 if case == "exception" else 9

        @app.agent(t)
        async def agent(stream):
            async for ev in stream.events():
                off = ev.message.offset
                log("start", [off])
                if off == bad:
                    log("raise", [off])
                    raise RuntimeError("processing failed")
                log("done", [off])

    elif case == "take_exception":

        @app.agent(t)
        async def agent(stream):
            async for evs in stream.take_events(5, within=0.5):
                offs = [e.message.offset for e in evs]
                log("start", offs)
                if 5 in offs:
                    log("raise", offs)
                    raise RuntimeError("batch failed (DB transaction rolled back)")
                log("done", offs)

    elif case == "noack_take_exception":

        @app.agent(t)
        async def agent(stream):
            async for evs in stream.noack_take(5, within=0.5):
                offs = [e.message.offset for e in evs]
                log("start", offs)
                if 5 in offs:
                    log("raise", offs)
                    raise RuntimeError("batch failed (DB transaction rolled back)")
                for e in evs:
                    await stream.ack(e)
                log("done", offs)

    elif case in ("concurrency", "concurrency_fresh"):
        slow = 10 if case == "concurrency" else 0

        @app.agent(t, concurrency=2)
        async def agent(stream):
            async for ev in stream.events():
                off = ev.message.offset
                log("start", [off])
                await asyncio.sleep(30 if off == slow else 0.1)
                log("done", [off])
    else:
        raise SystemExit(f"unknown case {case}")

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# --------------------------------------------------------------------- parent
async def prepare(topic: str, group: str, n: int, precommit) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    await ensure_topic(topic, 6)
    p = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await p.start()
    try:
        for i in range(n):
            await p.send_and_wait(topic, str(i).encode(), key=b"acct-1", partition=0)
    finally:
        await p.stop()
    if precommit is not None:
        c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            await c.commit({tp: precommit})
        finally:
            await c.stop()


def parent(case: str) -> dict:
    n, seconds, precommit = CASES[case]
    rid = uuid.uuid4().hex[:8]
    topic = f"adr-hz-{case.replace('_', '-')}-{rid}"
    group = f"adr-hz-{case.replace('_', '-')}-{rid}"
    log_path = f"/tmp/{group}.log"
    asyncio.run(prepare(topic, group, n, precommit))
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", case, topic, group, log_path],
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=open(f"/tmp/{group}.stderr", "w"),
    )
    try:
        time.sleep(seconds)
        committed_before_kill = asyncio.run(committed_offsets(group, topic)).get(0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    events = [json.loads(line) for line in open(log_path)] if os.path.exists(log_path) else []
    done = sorted({o for e in events if e["kind"] == "done" for o in e["offsets"]})
    raised = sorted({o for e in events if e["kind"] == "raise" for o in e["offsets"]})
    started = sorted({o for e in events if e["kind"] == "start" for o in e["offsets"]})
    in_flight = sorted(set(started) - set(done) - set(raised))
    committed = committed_before_kill or 0
    base = precommit or 0
    # every offset below the committed one that was NOT finished is lost on restart
    lost = [o for o in range(base, committed) if o not in done]
    result = {
        "case": case,
        "topic": topic,
        "messages": n,
        "precommitted": precommit,
        "started": started,
        "done": done,
        "raised": raised,
        "in_flight_at_kill": in_flight,
        "kafka_committed_p0_at_kill": committed_before_kill,
        "committed_past_unfinished": lost,
        "verdict": (
            "HAZARD: offsets committed for messages that raised or were still in flight"
            if lost
            else "safe: committed offset never passed an unfinished message"
        ),
    }
    err = open(f"/tmp/{group}.stderr").read()
    if "Traceback" in err or "RuntimeError" in err:
        result["worker_logged_exception"] = True
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        case, topic, group, log_path = sys.argv[2:6]
        sys.argv = [sys.argv[0], "worker"]
        worker(case, topic, group, log_path)
    else:
        cases = sys.argv[1:] or list(CASES)
        for c in cases:
            print(json.dumps(parent(c)), flush=True)
