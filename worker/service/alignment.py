"""Event-time alignment of the two co-partitioned input topics.

Partition N of the usage topic and partition N of the account topic hold the same accounts.
Like a Kafka Streams task, records are released from the two in `occurred_at` order of their
heads, so a purchase that happened before a usage event is applied first even when a backlog
hands them over in different fetches. When one side has nothing buffered, the other waits:
for as long as that side is known to have unread records (its position below its high
watermark, as Kafka Streams does since KIP-695), so a log replayed from any offset is released
in one order whatever the fetch timing; not at all once it is known to be caught up; and at most
`max_wait_s` while that is not known yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime

from worker.service.ports import Dead, Decoded, Source

Item = Decoded | Dead
Side = tuple[Source, int]

_OTHER: dict[Source, Source] = {"usage": "account", "account": "usage"}


def _time(item: Item) -> tuple[int, datetime | int]:
    # A dead letter changes no balance: release it as soon as it reaches the head.
    if isinstance(item, Dead):
        return (0, 0)
    return (1, item.command.occurred_at)


class Aligner:
    """Buffers decoded records per partition and releases them in event-time order."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.buffers: dict[Side, deque[Item]] = {}
        self.blocked_since: dict[int, float] = {}
        # Per side, the fetch position after the last records added: everything below it was
        # handed to the aligner (transaction markers included, which carry no record).
        self.fetched_through: dict[Side, int] = {}
        # Per side, the latest arrival (Kafka timestamp) among the records added: with
        # LogAppendTime, every record not yet read arrived at or after it.
        self.last_arrival: dict[Side, datetime | None] = {}

    def add(self, items: Iterable[Item]) -> None:
        """Items of one partition in offset order (several partitions may be mixed)."""
        for item in items:
            side = (item.record.source, item.record.partition)
            buffer = self.buffers.setdefault(side, deque())
            # A position that went back (reset to the committed offset after a rebalance)
            # reads again what is buffered from there on: keep the buffer in offset order, so
            # nothing of a higher offset is released, and committed, ahead of lower ones.
            while buffer and buffer[-1].record.offset >= item.record.offset:
                buffer.pop()
            buffer.append(item)
            arrived = item.record.arrived_at
            last = self.last_arrival.get(side)
            self.last_arrival[side] = (
                None if arrived is None else arrived if last is None else max(last, arrived)
            )

    def pending(self) -> dict[int, datetime | None]:
        """Per partition, the earliest arrival among records of either input still to be
        applied: those buffered, and those not read yet (at or after the last one read).
        None when a side has read nothing yet: its next record may have arrived at any time."""
        out: dict[int, datetime | None] = {}
        for partition in {p for _, p in self.buffers} | {p for _, p in self.last_arrival}:
            floors: list[datetime | None] = []
            for source in ("usage", "account"):
                side: Side = (source, partition)
                buffer = self.buffers.get(side)
                if buffer:
                    arrivals = [item.record.arrived_at for item in buffer]
                    floors.append(None if None in arrivals else min(a for a in arrivals if a))
                else:
                    floors.append(self.last_arrival.get(side))
            out[partition] = None if None in floors else min(f for f in floors if f)
        return out

    def fetched(self, positions: dict[Side, int]) -> None:
        """Fetch positions read right after the records just added were returned."""
        self.fetched_through.update(positions)

    def settled(self) -> dict[Side, int]:
        """Offsets below which a side holds nothing unreleased: safe to commit once what was
        released is committed to the database."""
        return {
            side: position
            for side, position in self.fetched_through.items()
            if not self.buffers.get(side)
        }

    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def waiting_on(self) -> list[Side]:
        """Empty sides whose counterpart has records waiting: is each caught up?"""
        return [
            (_OTHER[source], partition)
            for (source, partition), buffer in self.buffers.items()
            if buffer and not self.buffers.get((_OTHER[source], partition))
        ]

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget what was buffered for revoked partitions; it was never committed."""
        for partition in partitions:
            for source in ("usage", "account"):
                self.buffers.pop((source, partition), None)
                self.fetched_through.pop((source, partition), None)
                self.last_arrival.pop((source, partition), None)
            self.blocked_since.pop(partition, None)

    def clear(self) -> None:
        """Forget every partition: the consumer left the group."""
        sides = set(self.buffers) | set(self.fetched_through) | set(self.last_arrival)
        self.drop({partition for _, partition in sides} | set(self.blocked_since))

    def release(
        self, caught_up: set[Side], now_s: float, limit: int, behind: frozenset[Side] = frozenset()
    ) -> list[Item]:
        """Up to `limit` records in event-time order per partition pair; `caught_up` and
        `behind` say which empty sides are known to have nothing more, or more, to read."""
        out: list[Item] = []
        # One record per partition in turn: a backlog on a low partition number must not fill
        # every batch while the others wait (each partition pair keeps its own order).
        active = sorted({p for _, p in self.buffers})
        while active and len(out) < limit:
            still: list[int] = []
            for partition in active:
                if len(out) >= limit:
                    break
                usage = self.buffers.setdefault(("usage", partition), deque())
                account = self.buffers.setdefault(("account", partition), deque())
                side = self._next(usage, account, partition, caught_up, behind, now_s)
                if side is not None:
                    out.append(side.popleft())
                    still.append(partition)
            active = still
        return out

    def spans(self, partitions: Iterable[int]) -> dict[str, list[int]]:
        """First and last buffered offset per side of `partitions` (for logs)."""
        wanted = set(partitions)
        return {
            f"{source}/{partition}": [buffer[0].record.offset, buffer[-1].record.offset]
            for (source, partition), buffer in sorted(self.buffers.items())
            if partition in wanted and buffer
        }

    def _next(
        self,
        usage: deque[Item],
        account: deque[Item],
        partition: int,
        caught_up: set[Side],
        behind: frozenset[Side],
        now_s: float,
    ) -> deque[Item] | None:
        if usage and account:
            self.blocked_since.pop(partition, None)
            # Ties go to the account topic: a purchase at the same instant covers the usage.
            return usage if _time(usage[0]) < _time(account[0]) else account
        waiting = usage or account
        if not waiting:
            self.blocked_since.pop(partition, None)
            return None
        if isinstance(waiting[0], Dead):
            return waiting
        empty: Source = "account" if waiting is usage else "usage"
        if (empty, partition) in caught_up:
            return waiting
        if (empty, partition) in behind:
            # Its unread records may come first in event time: wait for them, however long.
            self.blocked_since.pop(partition, None)
            return None
        since = self.blocked_since.setdefault(partition, now_s)
        if now_s - since >= self.max_wait_s:
            return waiting
        return None
