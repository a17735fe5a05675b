"""Duplicates on the output topics as a consumer sees them, independent of the reference model.

A message the relay published twice is the same outbox row twice: the same key and the same
bytes. Distinct messages never share their bytes (each carries its own id), so a repeat of
(key, value) within a topic is a duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

Record = tuple[int, int, bytes | None, bytes | None]


def repeats(records: Iterable[Record]) -> int:
    """How many records are a copy of an earlier one of the same topic."""
    seen = Counter((key, value) for _, _, key, value in records)
    return sum(n - 1 for n in seen.values())


def by_topic(logs: dict[str, list[Record]], names: dict[str, str]) -> dict[str, int]:
    """Repeats per output topic, under the short names (`reminders`, …) of `names`."""
    return {name: repeats(logs[topic]) for name, topic in names.items()}
