"""Property: any key, value and headers end applied, skipped as a duplicate or dead-lettered,
through the real decoder and the real PostgreSQL write path, and a dead letter always stores."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas import DeadLetter
from schemas.dlq import MAX_PAYLOAD_BYTES
from worker.adapters.postgres import PgStore
from worker.adapters.rates import load_rate_table
from worker.adapters.wire import Decoder, Encoder
from worker.domain.account import Policy
from worker.entrypoints.stream import to_input
from worker.service.billing import apply_batch
from worker.service.ports import Dead

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:8]
TOPIC = f"hyp-{RUN}.usage"
DLQ = f"hyp-{RUN}.dlq"
OFFSETS = itertools.count()
NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson writes; bigger ones are in ODD_JSON
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
texts = st.text(max_size=70) | st.sampled_from(["", "\x00", "a\x00b", "é", "🙂", "x" * 200])
instants = st.datetimes(
    # hypothesis takes naive bounds and attaches the zone itself
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda d: d.isoformat()) | st.sampled_from(
    [NOW.isoformat(), "9999-10-02T23:30:00Z", "9999-12-31T23:59:59-01:00", "2000-01-01T00:00:00Z"]
)
VALID = {
    "event_id": "e-1",
    "account_id": f"hyp-{RUN}-a",
    "occurred_at": NOW.isoformat(),
    "destination": "+819012345678",
    "segments": 1,
    "amount": 1000,
    "payment_method": "credit_card",
    "purchase_id": "p-1",
    "contract_id": "c-1",
    "invoice_id": "INV-1",
    "enabled": True,
    "threshold": 500,
    "email": "ops@example.jp",
}
HOSTILE = {
    "event_id": texts,
    "account_id": texts.map(lambda a: f"hyp-{RUN}-{a}"),
    "occurred_at": instants,
    "destination": st.sampled_from(["+33612345678", "+999", "x"]) | texts,
    "segments": st.integers(-2, 2**40),
    "amount": st.integers(-1000, 2**62),
    "payment_method": st.sampled_from(["invoice", "\x00"]),
    "purchase_id": texts,
    "contract_id": texts,
    "invoice_id": texts,
    "enabled": st.booleans(),
    "threshold": st.integers(-1, 2**62),
    "email": texts | st.none(),
    "test_credits": st.integers(-1, 2**62),
}
TYPES = [
    "account_opened",
    "credits_purchased",
    "reminder_configured",
    "switched_to_postpay",
    "invoice_paid",
    "other",
]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event of some type (any field valid for the usage topic too), with up to two
    fields made hostile: most examples reach the database, the rest probe the edges."""
    event: dict[str, Any] = {**VALID, "type": draw(st.sampled_from(TYPES))}
    event["event_id"] = f"e-{draw(st.integers(0, 10**9))}"
    event["account_id"] = f"hyp-{RUN}-{draw(st.integers(0, 5))}"
    hostile = draw(st.sampled_from([0, 0, 0, 1, 2]))
    for name in draw(st.permutations(sorted(HOSTILE)))[:hostile]:
        event[name] = draw(HOSTILE[name])
    return event


ODD_JSON = [
    b"x" * (MAX_PAYLOAD_BYTES + 1),
    b"[" * 5000,
    b'{"a": NaN}',
    b"\xef\xbb\xbf{}",
    b'{"event_id": "e", "event_id": "f"}',
    b'{"segments": 123456789012345678901234567890}',
    b'{"amount": 1e400}',
    b'{"account_id": "\\ud800"}',
    b'"just a string"',
    b"",
]
values = st.one_of(
    events().map(orjson.dumps),
    events().map(orjson.dumps),
    st.sampled_from(ODD_JSON),
    json_values.map(orjson.dumps),
    st.binary(max_size=300),
    st.none(),
)
keys = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00", b"\xff\xfe", b"k" * 10240, "é".encode("latin-1")]),
)
headers = st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40)), max_size=3)


@st.composite
def records(draw: st.DrawFn) -> ConsumerRecord[bytes, bytes]:
    value = draw(values)
    key = draw(keys)
    # Mostly keyed right and stamped now, so that most well-formed events reach an account.
    if draw(st.sampled_from([True, True, True, False])) and value is not None:
        try:
            payload = orjson.loads(value)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("account_id"), str):
            key = payload["account_id"].encode("utf-8", errors="surrogatepass")
    return ConsumerRecord(
        topic=TOPIC,
        partition=draw(st.integers(0, 5)),
        offset=next(OFFSETS),
        timestamp=draw(st.sampled_from([NOW_MS] * 6 + [-1, 0, 2**53]) | st.integers(-1, 2**60)),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=-1 if key is None else len(key),
        serialized_value_size=-1 if value is None else len(value),
        headers=draw(headers),
    )


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[PgStore]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        yield PgStore(pool)
    finally:
        # Defuse what the examples left in the session's database: later tests' relays would
        # try to publish these rows to topics that do not exist, and their expiry sweeps would
        # forfeit these lots into their own reminder topics.
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE topic LIKE $1", f"hyp-{RUN}.%"
            )
            await conn.execute(
                "UPDATE lots SET forfeited = true, expiring_notified = true"
                " WHERE account_id LIKE $1",
                f"hyp-{RUN}-%",
            )
        await pool.close()


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=records())
async def test_any_record_is_applied_or_dead_lettered_with_its_key_and_value_intact(
    store: PgStore, message: ConsumerRecord[bytes, bytes]
) -> None:
    decoder = Decoder(load_rate_table(None))
    encoder = Encoder(f"hyp-{RUN}.reminders", f"hyp-{RUN}.invoices", DLQ, f"hyp-{RUN}.balances")
    record = to_input("usage" if message.partition % 2 else "account", message)

    outcome = decoder(record)
    report = await apply_batch(store, [outcome], Policy(), encoder, NOW)

    ends = sum(report.applied.values()) + sum(report.duplicates.values()) + len(report.dead)
    assert ends == 1, (outcome, report)
    event(
        f"{record.source}: "
        + (f"dead {report.dead[0].code}" if report.dead else "applied or duplicate")
    )
    if isinstance(outcome, Dead) or report.dead:
        await _assert_dead_letter_stored(store, message)


async def _assert_dead_letter_stored(store: PgStore, message: ConsumerRecord[Any, Any]) -> None:
    message_id = f"dlq:{TOPIC}:{message.partition}:{message.offset}"
    async with store.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT key, payload FROM outbox WHERE message_id = $1 AND topic = $2", message_id, DLQ
        )
    assert row is not None, message_id
    assert (None if row["key"] is None else bytes(row["key"])) == message.key
    letter = DeadLetter.model_validate_json(bytes(row["payload"]))
    assert letter.original_key() == message.key
    assert letter.original_payload() == (message.value or b"")[:MAX_PAYLOAD_BYTES]
    assert letter.payload_size == len(message.value or b"")
