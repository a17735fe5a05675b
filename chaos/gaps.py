"""Input ranges neither applied nor dead-lettered, and what the worker logs say about them.

For each range: every worker process that was assigned its partition (and when), and the first
offset commit that moved the group past its first record, with the generation, batch size and
released offsets the committing process logged (`BILLING_LOG_DEBUG=worker.stream`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

Position = tuple[str, int, int]  # topic, partition, offset

_TP = re.compile(r"TopicPartition\(topic='(?P<topic>[^']*)', partition=(?P<partition>\d+)\)")


@dataclass(frozen=True)
class Commit:
    """One `offsets_committed` line of a worker process."""

    at: str
    process: str  # worker name and incarnation, e.g. "B#1"
    offset: int
    generation: int | None
    batch: int | None
    released: list[int] | None  # first and last offset of the partition in that batch


@dataclass
class Trace:
    """What the worker logs say, per `topic:partition`."""

    assigned: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    commits: dict[str, list[Commit]] = field(default_factory=lambda: defaultdict(list))


def missing_ranges(
    inputs: Iterable[Position],
    expected_applied: set[Position],
    expected_dead: set[Position],
    applied: set[Position],
    dead: set[Position],
) -> list[tuple[str, int, int, int, int]]:
    """(topic, partition, first, last, records) of consecutive input records that the model
    applies or dead-letters and the worker did neither with; records the model does neither
    with (re-sends skipped as duplicates) neither start nor break a range."""
    by_tp: dict[tuple[str, int], list[int]] = defaultdict(list)
    for topic, partition, offset in inputs:
        by_tp[(topic, partition)].append(offset)
    out: list[tuple[str, int, int, int, int]] = []
    for (topic, partition), offsets in sorted(by_tp.items()):
        run: list[int] = []
        for offset in sorted(offsets):
            position = (topic, partition, offset)
            wanted = position in expected_applied or position in expected_dead
            done = position in applied or position in dead
            if wanted and not done:
                run.append(offset)
            elif wanted and run:
                out.append((topic, partition, run[0], run[-1], len(run)))
                run = []
        if run:
            out.append((topic, partition, run[0], run[-1], len(run)))
    return out


def read_trace(run_dir: Path, workers: Iterable[str] | None = None) -> Trace:
    """Assignments and commits from the `worker-NAME.log` files of a run (JSON lines), of the
    `workers` named (None: all; a group that reads the same inputs is left out by name)."""
    trace = Trace()
    wanted = None if workers is None else set(workers)
    for path in sorted(run_dir.glob("worker-*.log")):
        name = path.stem.removeprefix("worker-")
        if wanted is None or name in wanted:
            _read_log(path, name, trace)
    return trace


def _read_log(path: Path, name: str, trace: Trace) -> None:
    incarnation = 0
    for line in path.read_bytes().splitlines():
        try:
            event: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        kind = event.get("event")
        at, process = event.get("timestamp", ""), f"{name}#{incarnation}"
        if kind == "worker_started":
            incarnation += 1
        elif kind == "partitions_assigned":
            for text in event.get("partitions", []):
                m = _TP.fullmatch(text)
                if m:
                    key = f"{m['topic']}:{m['partition']}"
                    trace.assigned[key].append((at, process))
        elif kind == "offsets_committed":
            released = event.get("released") or {}
            for key, offset in (event.get("offsets") or {}).items():
                trace.commits[key].append(
                    Commit(
                        at,
                        process,
                        offset,
                        event.get("generation"),
                        event.get("batch"),
                        released.get(key),
                    )
                )


def explain(ranges: list[tuple[str, int, int, int, int]], trace: Trace) -> list[dict[str, Any]]:
    """Each range with its partition's owners and the commit that first passed it."""
    out = []
    for topic, partition, first, last, records in ranges:
        key = f"{topic}:{partition}"
        commits = sorted(trace.commits.get(key, []), key=lambda c: c.at)
        past = next((c for c in commits if c.offset > first), None)
        owners = sorted(trace.assigned.get(key, []))
        owner = None
        if past is not None:
            before = [process for at, process in owners if at <= past.at]
            owner = before[-1] if before else None
        out.append(
            {
                "topic": topic,
                "partition": partition,
                "first": first,
                "last": last,
                "records": records,
                "assigned": [f"{process} at {at}" for at, process in owners],
                "owner_at_commit": owner,
                "committed_past": None if past is None else past.__dict__,
            }
        )
    return out


def describe(lost: Mapping[str, Any]) -> str:
    """One line for the printed summary."""
    text = (
        f"lost: {lost['topic']} p{lost['partition']} offsets {lost['first']}-{lost['last']} "
        f"({lost['records']} records) neither applied nor dead-lettered"
    )
    past = lost.get("committed_past")
    if past is None:
        return text + "; no traced commit passed them (run the workers with BILLING_LOG_DEBUG)"
    return (
        text + f"; committed past by {past['process']} at {past['at']}: offset {past['offset']}, "
        f"generation {past['generation']}, batch {past['batch']}, released {past['released']}; "
        f"owners {lost['assigned']}"
    )
