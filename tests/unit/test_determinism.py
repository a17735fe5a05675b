"""One input log, one outcome: batch boundaries, fetch timing and outages change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.unit.builders import POLICY, T0, at
from tests.unit.fake_store import FakeStore
from worker.adapters.digest import newest_snapshots
from worker.adapters.wire import Encoder
from worker.domain.commands import ChargeUsage, Command, ConfigureReminder, OpenAccount
from worker.domain.rating import Rated
from worker.service.alignment import Aligner
from worker.service.billing import apply_batch, sweep_expiry
from worker.service.ports import Decoded, InputRecord, Source

ENCODER = Encoder("reminders", "invoices", "dlq", "balances")
EXPIRY = T0 + POLICY.lot_validity
LATENESS = POLICY.lateness


def record(source: Source, offset: int, command: Command, arrived: datetime) -> Decoded:
    raw = InputRecord(source, source, 0, offset, b"acc-1", b"{}", int(arrived.timestamp() * 1000))
    if isinstance(command, ChargeUsage):
        command = ChargeUsage(
            command.event_id,
            command.account_id,
            command.occurred_at,
            command.rated,
            raw.arrived_at,
        )
    return Decoded(raw, command, command.event_id.encode())


def usage(offset: int, amount_jpy: int, occurred: datetime, arrived: datetime) -> Decoded:
    rated = Rated("JP", 10, amount_jpy // 10)
    return record("usage", offset, ChargeUsage(f"u{offset}", "acc-1", occurred, rated), arrived)


def setup(threshold_jpy: int = 500) -> list[Decoded]:
    """Opened at T0 with 1,000 test credits, low-balance reminder at `threshold_jpy`."""
    return [
        record("account", 0, OpenAccount("a0", "acc-1", T0, 1_000), T0),
        record("account", 1, ConfigureReminder("a1", "acc-1", T0, True, threshold_jpy, "o@x"), T0),
    ]


async def run(batches: list[list[Decoded]], sweeps: dict[int, datetime] | None = None) -> FakeStore:
    """Apply the batches in order; `sweeps[i]` runs the expiry timer before batch i."""
    store = FakeStore()
    for i, batch in enumerate(batches):
        if sweeps and i in sweeps:
            await sweep_expiry(store, sweeps[i], POLICY, ENCODER)
        await apply_batch(store, batch, POLICY, ENCODER, T0)
    return store


def outcome(store: FakeStore) -> tuple[list[object], list[tuple[str, bytes]]]:
    """Ledger and outbox; of the balance snapshots only the newest per account, what the
    compacted topic keeps (how many came before it depends on the batches, by design)."""
    balances = ENCODER.balances_topic
    kept = newest_snapshots(
        (m.message_id, m.key, m.payload) for m in store.db.outbox if m.topic == balances
    )
    return list(store.db.ledger), [
        (m.message_id, m.payload)
        for m in store.db.outbox
        if m.topic != balances or m.message_id in kept
    ]


async def test_batch_boundaries_do_not_change_which_charge_crosses_the_threshold() -> None:
    # The usage topic holds u1 (later event time) before u2: the aligner releases them in
    # offset order; before, each batch was re-sorted by event time, so the reminder's cause
    # depended on whether u1 and u2 were fetched together.
    u1 = usage(0, 300, at(2), at(2))
    u2 = usage(1, 300, at(1), at(2))

    together = await run([setup(), [u1, u2]])
    apart = await run([setup(), [u1], [u2]])

    assert outcome(together) == outcome(apart)
    [low] = [m for m in apart.db.outbox if b'"low_balance"' in m.payload]
    assert low.message_id == "acc-1:low_balance:charge:u1"  # the second in offset order


def test_aligner_waits_for_the_other_topic_while_it_has_unread_records() -> None:
    aligner = Aligner(max_wait_s=1.0)
    aligner.add([usage(0, 10, at(1), at(1))])

    assert aligner.release(set(), 0.0, 10, frozenset({("account", 0)})) == []
    assert aligner.release(set(), 100.0, 10, frozenset({("account", 0)})) == []
    # Once its high watermark says it has nothing unread, nothing is waited for.
    assert len(aligner.release({("account", 0)}, 100.0, 10)) == 1


def test_aligner_waits_at_most_the_max_wait_while_the_other_side_is_unknown() -> None:
    aligner = Aligner(max_wait_s=1.0)
    aligner.add([usage(0, 10, at(1), at(1))])

    assert aligner.release(set(), 0.0, 10) == []
    assert len(aligner.release(set(), 1.0, 10)) == 1


def test_aligner_releases_a_merge_of_heads_keeping_offset_order_within_a_topic() -> None:
    aligner = Aligner(max_wait_s=1.0)
    late_first = usage(0, 10, at(3), at(3))
    early_second = usage(1, 10, at(1), at(3))
    purchase = record("account", 0, OpenAccount("a0", "acc-1", at(2), 100), at(2))
    aligner.add([late_first, early_second, purchase])

    released = aligner.release({("account", 0)}, 0.0, 10)

    assert [d.record.offset for d in released if d.record.source == "usage"] == [0, 1]
    assert released[0] is purchase


async def test_a_lot_pays_only_for_usage_that_reached_kafka_within_the_lateness() -> None:
    in_time = usage(0, 100, EXPIRY - timedelta(minutes=5), EXPIRY + LATENESS)
    too_late = usage(
        1, 100, EXPIRY - timedelta(minutes=5), EXPIRY + LATENESS + timedelta(seconds=1)
    )

    store = await run([setup(0), [in_time, too_late]])

    charges = {e.ref: e for e in store.db.ledger if e.kind == "charge"}
    assert charges["u0"].allocations == (("lot:a0", 100),)
    assert charges["u1"].allocations == ()
    forfeit = next(e for e in store.db.ledger if e.kind == "forfeit")
    # Forfeited right before the first record that arrived after expiry plus lateness.
    kinds = [e.kind for e in store.db.ledger]
    assert kinds == ["grant", "charge", "forfeit", "charge"]
    assert (forfeit.amount_jpy, forfeit.balance_after_jpy) == (-900, 0)


async def test_a_worker_down_for_a_day_bills_what_one_that_never_stopped_bills() -> None:
    backlog = [
        usage(0, 200, EXPIRY - timedelta(hours=2), EXPIRY - timedelta(hours=2)),
        usage(1, 300, EXPIRY - timedelta(minutes=1), EXPIRY + timedelta(minutes=30)),
        usage(2, 100, EXPIRY + timedelta(hours=3), EXPIRY + timedelta(hours=3)),
    ]
    notice_at = EXPIRY - POLICY.expiring_notice
    # Never stopped: the timer ran on time, each time after what had arrived was applied.
    live = await run(
        [setup(), backlog[:1], backlog[1:2], backlog[2:]],
        sweeps={1: notice_at, 3: EXPIRY + LATENESS},
    )
    # Down for a day: the timer's first run is a day late and the whole backlog comes at once.
    # The timer only sweeps once the backlog is applied (the end-offset gate), so it finds
    # nothing left to do; the stream forfeited in place.
    down = await run([setup(), backlog], sweeps={})
    await sweep_expiry(down, EXPIRY + timedelta(days=1), POLICY, ENCODER)
    await sweep_expiry(live, EXPIRY + timedelta(days=1), POLICY, ENCODER)

    assert outcome(down) == outcome(live)
    kinds = [(e.kind, e.amount_jpy) for e in down.db.ledger]
    assert kinds == [
        ("grant", 1_000),
        ("charge", -200),
        ("charge", -300),
        ("forfeit", -500),
        ("charge", -100),
    ]
    expiring = [m for m in down.db.outbox if m.message_id.endswith("credits_expiring:lot:a0")]
    assert b'"created_at":"' in expiring[0].payload


async def test_a_late_account_event_released_first_does_not_forfeit_credit_owed_to_usage() -> None:
    # The lot (1,000 test credits) expires at EXPIRY. Usage u occurred a minute before and
    # reached Kafka 30 minutes after (within the hour's lateness): the lot owes it 100.
    # A reminder setting r occurred two minutes before expiry but reached Kafka two hours
    # after; released first (earlier event time), it must not forfeit the lot ahead of u.
    r = record(
        "account",
        2,
        ConfigureReminder("a2", "acc-1", EXPIRY - timedelta(minutes=2), True, 100, "o@x"),
        EXPIRY + timedelta(hours=2),
    )
    u = usage(0, 100, EXPIRY - timedelta(minutes=1), EXPIRY + timedelta(minutes=30))

    store = await run([setup(), [r, u]])
    await sweep_expiry(store, EXPIRY + timedelta(hours=3), POLICY, ENCODER)

    entries = [(e.kind, e.amount_jpy, e.balance_after_jpy) for e in store.db.ledger]
    assert entries == [("grant", 1_000, 1_000), ("charge", -100, 900), ("forfeit", -900, 0)]


async def test_nothing_is_forfeited_in_front_of_a_record_while_the_other_input_is_unknown() -> None:
    # Arrived three hours after expiry, but the account input of its partition has not been
    # read: a record that arrived in time may still come from there. Only the timer forfeits.
    late = usage(5, 100, EXPIRY + timedelta(hours=2), EXPIRY + timedelta(hours=3))
    store = FakeStore()
    await apply_batch(store, setup(), POLICY, ENCODER, T0)
    await apply_batch(store, [late], POLICY, ENCODER, T0, pending={0: None})

    kinds = [(e.kind, e.amount_jpy) for e in store.db.ledger]
    assert kinds == [("grant", 1_000), ("charge", -100)]  # the expired lot did not pay either


async def test_where_a_forfeit_lands_before_a_late_record_depends_on_knowing_it_is_late() -> None:
    # The documented limit (README, "Deterministic"): usage that occurred before expiry but
    # reached Kafka after expiry + lateness. Knowing every record still pending arrived after
    # the moment, the stream forfeits in front of it; not knowing (the other input of the
    # partition not read yet), it applies the record and the timer forfeits after it. The same
    # money either way; the balance after each entry differs.
    late = usage(5, 100, EXPIRY - timedelta(minutes=1), EXPIRY + LATENESS + timedelta(hours=1))
    swept = EXPIRY + LATENESS + timedelta(hours=2)

    known = FakeStore()
    await apply_batch(known, setup(), POLICY, ENCODER, T0)
    await apply_batch(known, [late], POLICY, ENCODER, T0, pending={0: swept})
    await sweep_expiry(known, swept, POLICY, ENCODER)
    unknown = FakeStore()
    await apply_batch(unknown, setup(), POLICY, ENCODER, T0)
    await apply_batch(unknown, [late], POLICY, ENCODER, T0, pending={0: None})
    await sweep_expiry(unknown, swept, POLICY, ENCODER)

    def entries(store: FakeStore) -> list[tuple[str, int, int]]:
        return [(e.kind, e.amount_jpy, e.balance_after_jpy) for e in store.db.ledger]

    assert entries(known) == [
        ("grant", 1_000, 1_000),
        ("forfeit", -1_000, 0),
        ("charge", -100, -100),
    ]
    assert entries(unknown) == [
        ("grant", 1_000, 1_000),
        ("charge", -100, 900),  # the expired lot does not pay it: it arrived too late
        ("forfeit", -1_000, -100),
    ]


def test_records_read_again_after_a_reset_replace_what_was_buffered_from_there_on() -> None:
    # Offsets 5 and 6 were buffered; the position is reset to 3 (a rebalance gave the
    # partition back from its committed offset) and 3..6 are read again. Releasing the old 5
    # and 6 first would let their commit pass 3 and 4 before those were applied.
    aligner = Aligner(max_wait_s=0.0)
    aligner.add([usage(5, 10, at(1), at(1)), usage(6, 10, at(1), at(1))])
    aligner.add([usage(n, 10, at(1), at(1)) for n in (3, 4, 5, 6)])

    released = aligner.release({("account", 0)}, 0.0, 10)

    assert [item.record.offset for item in released] == [3, 4, 5, 6]


def test_a_full_batch_takes_partitions_in_turn_so_none_starves() -> None:
    # Partition 0 has a backlog of 10, partition 1 has 4: a batch of 6 takes from both, and
    # each partition still in its own offset order.
    aligner = Aligner(max_wait_s=0.0)
    rated = Rated("JP", 10, 1)
    for partition, count in ((0, 10), (1, 4)):
        aligner.add(
            [
                Decoded(
                    InputRecord("usage", "usage", partition, n, b"acc-1", b"{}", 0),
                    ChargeUsage(f"u{partition}-{n}", "acc-1", at(1), rated, at(1)),
                    b"f",
                )
                for n in range(count)
            ]
        )

    released = aligner.release({("account", 0), ("account", 1)}, 0.0, 6)

    assert [(i.record.partition, i.record.offset) for i in released] == [
        (0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2),
    ]  # fmt: skip
    assert aligner.spans([0, 1]) == {"usage/0": [3, 9], "usage/1": [3, 3]}


def test_leaving_the_group_forgets_every_position_not_only_those_with_records() -> None:
    # A side that never held a record still has a fetch position; after the consumer leaves
    # the group, a settled commit from it would name an offset from the old assignment.
    aligner = Aligner(0.0)
    aligner.add([usage(0, 10, T0, T0)])
    aligner.fetched({("usage", 0): 1, ("account", 0): 5, ("usage", 2): 7, ("account", 2): 3})
    aligner.clear()
    assert aligner.settled() == {}
    assert aligner.buffered() == 0
    assert aligner.pending() == {}
