"""Are the two input topics usable as a co-partitioned pair, with arrival timestamps?"""

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


def timestamp_problem(types: dict[str, str | None]) -> str | None:
    """Why the inputs' record timestamps cannot be trusted as arrivals, or None.

    Lateness is measured by arrival (the record timestamp): with CreateTime a producer's clock
    chooses it, and so whether a lot still pays for its usage."""
    producer_stamped = sorted(topic for topic, kind in types.items() if kind == "CreateTime")
    if not producer_stamped:
        return None
    names = ", ".join(producer_stamped)
    return (
        f"input topic {names} has message.timestamp.type=CreateTime, so producers' clocks would "
        "decide lateness: set message.timestamp.type=LogAppendTime on it (kafka-configs.sh "
        f"--alter --entity-type topics --entity-name {producer_stamped[0]} --add-config "
        "message.timestamp.type=LogAppendTime), or set BILLING_ALLOW_CREATE_TIME_INPUTS=true "
        "if the producers' clocks are trusted"
    )
