"""A record whose dead letter cannot be written ends as one bare dead letter, not as dead
letters of dead letters until RecursionError (the NUL-key failure of the text outbox key)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime

import pytest

from schemas import DeadLetter
from worker.adapters.wire import Encoder
from worker.builders import policy_from
from worker.config import Settings
from worker.domain.account import Account
from worker.domain.commands import OpenAccount
from worker.entrypoints.stream import StreamProcessor
from worker.errors import ShuttingDown
from worker.metrics import Metrics
from worker.service.ports import Changes, Dead, Decoded, EventKey, InputRecord, OutboxMessage

AT = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)


class KeyRefusingStore:
    """Refuses, like PostgreSQL text did, any outbox key holding a NUL byte."""

    def __init__(self) -> None:
        self.saved: list[OutboxMessage] = []
        self.attempts = 0
        self.created: set[str] = set()

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[KeyRefusingStore]:
        self.attempts += 1
        yield self

    async def lock_accounts(
        self, account_ids: Sequence[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, Account]:
        return {a: Account(a) for a in account_ids}

    async def seen(self, keys: Sequence[EventKey]) -> dict[EventKey, bytes]:
        return {}

    async def load_usage(self, since: Mapping[str, date]) -> dict[str, dict[date, int]]:
        return {}

    async def save(self, changes: Changes) -> None:
        # Only the dead letter's key is refused here: the balance snapshot is not under test.
        if any(m.topic == "d" and m.key is not None and b"\x00" in m.key for m in changes.outbox):
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        if any(isinstance(d.command, OpenAccount) for d in changes.processed):
            raise ValueError("a bug applying this record")
        self.saved += changes.outbox


def processor(store: KeyRefusingStore) -> StreamProcessor:
    settings = Settings()
    return StreamProcessor(
        settings,
        store,  # type: ignore[arg-type]
        lambda record: Dead(record, "unused", "unused"),
        Encoder("r", "i", "d", "b"),
        policy_from(settings),
        Metrics(),
    )


def record(key: bytes | None, value: bytes) -> InputRecord:
    return InputRecord("usage", "in", 0, 7, key, value, 0)


async def test_a_dead_letter_that_cannot_be_stored_becomes_one_bare_dead_letter() -> None:
    store = KeyRefusingStore()
    dead = Dead(record(b"acc-1\x00", b"not json"), "malformed_json", "not valid JSON")

    report = await processor(store)._apply([dead], {}, asyncio.Event())

    [message] = store.saved
    letter = DeadLetter.model_validate_json(message.payload)
    assert (message.key, letter.key, letter.payload_size) == (None, None, 0)
    assert (letter.error_code, letter.source_topic, letter.source_offset) == (
        "malformed_json",
        "in",
        7,
    )
    assert "in/0/7" in letter.reason
    assert len(report.dead) == 1
    assert store.attempts == 2


async def test_a_record_that_fails_and_whose_dead_letter_fails_ends_after_three_attempts() -> None:
    store = KeyRefusingStore()
    opened = OpenAccount("o-1", "acc-1\x00", AT, 0)
    decoded = Decoded(record(b"acc-1\x00", b"{}"), opened, b"f")

    report = await processor(store)._apply([decoded], {}, asyncio.Event())

    [message] = store.saved
    letter = DeadLetter.model_validate_json(message.payload)
    assert (message.key, letter.error_code) == (None, "processing_error")
    assert "a bug applying this record" in letter.reason
    assert len(report.dead) == 1
    assert store.attempts == 3


class BareRefusingStore(KeyRefusingStore):
    """Refuses every dead letter, bare ones too, `refusals` times: the database's fault."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def save(self, changes: Changes) -> None:
        if self.refusals and any(m.topic == "d" for m in changes.outbox):
            self.refusals -= 1
            raise ValueError("the database refused this write")
        self.saved += changes.outbox


async def test_a_bare_dead_letter_that_fails_is_written_again_not_re_raised() -> None:
    # The letter and its bare form fail, then the bare one twice more: it is written at last,
    # never raised out of the consumer (which crashed the worker) nor skipped.
    store = BareRefusingStore(refusals=4)
    dead = Dead(record(b"acc-1", b"not json"), "malformed_json", "not valid JSON")

    report = await processor(store)._apply([dead], {}, asyncio.Event())

    [message] = store.saved
    letter = DeadLetter.model_validate_json(message.payload)
    assert (letter.error_code, letter.source_offset, letter.key) == ("malformed_json", 7, None)
    assert len(report.dead) == 1
    assert store.attempts == 5


async def test_a_bare_dead_letter_still_failing_at_shutdown_leaves_the_batch_uncommitted() -> None:
    store = BareRefusingStore(refusals=1_000)
    stop = asyncio.Event()
    stop.set()
    dead = Dead(record(b"acc-1", b"not json"), "malformed_json", "not valid JSON")

    with pytest.raises(ShuttingDown):
        await processor(store)._apply([dead], {}, stop)
    assert store.saved == []
