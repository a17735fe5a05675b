"""The lost-range report: ranges of input neither applied nor dead-lettered, traced in the logs."""

from __future__ import annotations

import json
from pathlib import Path

from chaos import gaps

T = "s.usage"


def test_a_range_is_the_consecutive_records_neither_applied_nor_dead_lettered() -> None:
    inputs = [(T, 5, n) for n in range(10)] + [(T, 4, 0)]
    # 3 is a re-send the model skips: it neither starts nor breaks a range.
    expected_applied = {(T, 5, n) for n in (0, 1, 2, 4, 5, 6, 8)} | {(T, 4, 0)}
    expected_dead = {(T, 5, 7), (T, 5, 9)}
    applied = {(T, 5, n) for n in (0, 1, 6)} | {(T, 4, 0)}
    dead = {(T, 5, 7)}

    ranges = gaps.missing_ranges(inputs, expected_applied, expected_dead, applied, dead)

    assert ranges == [(T, 5, 2, 5, 3), (T, 5, 8, 9, 2)]


def _log(path: Path, lines: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_report_names_the_owners_and_the_commit_that_passed_the_range(tmp_path: Path) -> None:
    tp = f"TopicPartition(topic='{T}', partition=5)"
    _log(
        tmp_path / "worker-A.log",
        [
            {"event": "worker_started", "timestamp": "t00"},
            {"event": "partitions_assigned", "partitions": [tp], "timestamp": "t01"},
            {"event": "offsets_committed", "offsets": {f"{T}:5": 1962}, "generation": 1,
             "batch": 300, "released": {f"{T}:5": [1700, 1961]}, "timestamp": "t02"},
        ],
    )  # fmt: skip
    _log(
        tmp_path / "worker-B.log",
        [
            {"event": "worker_started", "timestamp": "t00"},
            {"event": "worker_started", "timestamp": "t03"},
            {"event": "partitions_assigned", "partitions": [tp], "timestamp": "t04"},
            {"event": "offsets_committed", "offsets": {f"{T}:5": 1990}, "generation": 2,
             "batch": 0, "released": {}, "timestamp": "t05"},
        ],
    )  # fmt: skip

    # The reference group reads the same inputs under its own group: not part of the trace.
    _log(
        tmp_path / "worker-R.log",
        [{"event": "offsets_committed", "offsets": {f"{T}:5": 1970}, "timestamp": "t00"}],
    )

    [lost] = gaps.explain([(T, 5, 1962, 1989, 28)], gaps.read_trace(tmp_path, ["A", "B"]))

    assert lost["assigned"] == ["A#1 at t01", "B#2 at t04"]
    assert lost["owner_at_commit"] == "B#2"
    assert lost["committed_past"] == {
        "at": "t05",
        "process": "B#2",
        "offset": 1990,
        "generation": 2,
        "batch": 0,
        "released": None,
    }
    line = gaps.describe(lost)
    assert "p5 offsets 1962-1989 (28 records)" in line
    assert "committed past by B#2 at t05: offset 1990" in line
