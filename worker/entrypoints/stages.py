"""Where an event's time goes: the first record of each batch, traced from the broker on."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from worker.metrics import Metrics
from worker.service.ports import Dead, Decoded, Source

Side = tuple[Source, int]
# Fetches remembered per side until their records are released; a revoked side stops growing.
_KEEP = 1000


class StageTrace:
    """Stamps each fetch per side; observes fetch, queue and align for a batch's first record."""

    def __init__(self, metrics: Metrics) -> None:
        self.seconds = metrics.stage_seconds
        # Per side: (last offset of a fetch, fetched at wall clock, fetched at, added at).
        self.fetches: dict[Side, deque[tuple[int, float, float, float]]] = {}

    def added(
        self, items: Sequence[Decoded | Dead], fetched_wall: float, fetched_mono: float
    ) -> None:
        """Records of one fetch reached the aligner now."""
        now = time.monotonic()
        last: dict[Side, int] = {}
        for item in items:  # each partition's records come in offset order
            record = item.record
            last[(record.source, record.partition)] = record.offset
        for side, offset in last.items():
            stamps = self.fetches.setdefault(side, deque(maxlen=_KEEP))
            stamps.append((offset, fetched_wall, fetched_mono, now))

    def released(self, first: Decoded | Dead) -> None:
        """`first` leads the batch just released: how long it took to get here, by stage."""
        record = first.record
        stamps = self.fetches.get((record.source, record.partition))
        while stamps and stamps[0][0] < record.offset:
            stamps.popleft()  # every record of that fetch was released before
        if not stamps:
            return
        _, fetched_wall, fetched_mono, added = stamps[0]
        if record.timestamp_ms >= 0:
            # Broker append (or the producer's send) to the consumer returning the record.
            self.seconds.labels("fetch").observe(max(fetched_wall - record.timestamp_ms / 1000, 0))
        # Decoded, then held while the batch before it was in the database.
        self.seconds.labels("queue").observe(added - fetched_mono)
        # In the aligner, waiting for the other input or for the next fetch to return.
        self.seconds.labels("align").observe(time.monotonic() - added)
