"""Are the two input topics usable as a co-partitioned pair?"""

from __future__ import annotations


def input_problem(counts: dict[str, int | None]) -> str | None:
    """Why the inputs cannot be consumed (naming topics and partition counts), or None."""
    missing = sorted(topic for topic, n in counts.items() if not n)
    if missing:
        return "input topic missing: " + ", ".join(missing)
    if len({n for n in counts.values()}) > 1:
        shown = ", ".join(f"{topic} has {n}" for topic, n in sorted(counts.items()))
        return (
            f"input topics must have the same number of partitions ({shown}); waiting until they do"
        )
    return None
