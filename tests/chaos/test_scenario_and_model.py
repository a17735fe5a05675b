"""The chaos run's own parts, without I/O: the scenario's layout, the model, the comparison."""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from chaos import check, model, oracle_feed
from chaos.kafka_io import waves
from chaos.scenario import Params, Scenario, ScenarioError, build
from worker.adapters.rates import load_rate_table
from worker.adapters.wire import Decoder, wire_balance
from worker.domain.account import Policy
from worker.domain.balance import balance_state
from worker.domain.invoicing import previous_period
from worker.service.ports import Dead, Decoded, InputRecord

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = Policy(lateness=timedelta(seconds=5))
TOPICS = {"reminders": "r", "invoices": "i", "dlq": "d"}
RESENDS = {"duplicate", "conflict", "late_usage"}


def scenario(seed: int = 3) -> Scenario:
    return build(
        Params(events=4000, accounts=150, seed=seed),
        START,
        POLICY,
        load_rate_table(None),
        ZoneInfo("Asia/Tokyo"),
    )


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return scenario()


def records(sc: Scenario) -> list[model.Record]:
    """As if produced one partition per topic, in order."""
    return [model.Record(item, item.source, 0, n) for n, item in enumerate(sc.items())]


@pytest.fixture(scope="module")
def expected(sc: Scenario) -> model.Expected:
    return model.replay(
        records(sc), POLICY, sc.layout.period, sc.close_seq, START + timedelta(hours=1)
    )


def test_the_same_seed_lays_out_the_same_records(sc: Scenario) -> None:
    again = scenario()

    assert [(i.key, i.value) for i in again.items()] == [(i.key, i.value) for i in sc.items()]
    assert [i.value for i in scenario(4).items()] != [i.value for i in sc.items()]


def test_the_scenario_has_every_ingredient_of_the_issue(sc: Scenario) -> None:
    labels = {i.label for i in sc.items()}
    kinds = set(sc.categories.values())
    invoice_purchases = [
        i for i in sc.items() if i.value and b'"invoice"' in i.value and i.label == "purchase"
    ]

    assert len(sc.items()) >= 4000
    assert {
        "usage",
        "purchase",
        "reminder",
        "open",
        "switch",
        "payment",
        "late_usage",
        "duplicate",
        "conflict",
    } <= labels
    assert kinds == {"expiry", "postpay", "late", "implicit", "normal"}
    assert invoice_purchases
    assert sum(1 for i in sc.items() if i.dead_code) >= 0.005 * len(sc.items())


def test_each_account_gets_its_events_in_time_order_of_production(sc: Scenario) -> None:
    seen: dict[str, datetime] = {}
    for item in sc.items():
        if item.dead_code or item.label in RESENDS or item.command is None:
            continue
        at = item.command.occurred_at
        assert at > seen.get(item.command.account_id, at - timedelta(1)), item
        seen[item.command.account_id] = at


def test_accounts_with_expiring_lots_or_late_usage_are_quiet_after_phase_zero(sc: Scenario) -> None:
    for item in sc.main:
        kind = sc.categories.get(item.key or "")
        if item.dead_code is None and kind == "expiry":
            pytest.fail(f"{item} reaches an account whose lots expire during the run")
        if item.dead_code is None and kind == "late":
            assert item.label == "late_usage", item


def test_only_payments_and_late_usage_wait_for_the_close(sc: Scenario) -> None:
    gated = [n for n, i in enumerate(sc.main) if i.after_close]

    assert gated
    assert gated[0] > len(sc.main) // 3
    assert {sc.main[n].label.removeprefix("reject:") for n in gated} <= {
        "payment",
        "overpayment",
        "unknown_invoice",
        "late_usage",
    }
    assert all(i.seq >= sc.close_seq for i in sc.main if i.after_close)


def test_no_wave_holds_one_account_on_both_topics(sc: Scenario) -> None:
    split = waves(sc.main, max_size=300)

    assert [i for wave in split for i in wave] == sc.main
    for wave in split:
        sources = defaultdict(set)
        for item in wave:
            sources[item.key].add(item.source)
        assert all(len(s) == 1 for s in sources.values())
    assert any(wave[0].after_close for wave in split)


def test_the_records_decode_to_what_the_model_applies(sc: Scenario) -> None:
    decoder = Decoder(load_rate_table(None))
    # Records reach Kafka once the scenario starts, after every event of it occurred.
    sent_ms = int(sc.layout.start.timestamp() * 1000)
    fingerprints: dict[tuple[str, str], dict[int, bytes]] = defaultdict(dict)
    for item in sc.items():
        got = decoder(
            InputRecord(
                item.source,
                item.source,
                0,
                0,
                None if item.key is None else item.key.encode(),
                item.value,
                sent_ms,
            )
        )
        if item.dead_code is not None:
            assert isinstance(got, Dead), (item, got)
            assert got.code == item.dead_code, (item, got)
            continue
        assert isinstance(got, Decoded), (item, got)
        if item.label != "conflict":
            assert got.command == item.command
        fingerprints[got.key][item.token] = got.fingerprint
    # A re-send with the same token is the same payload to the worker; a conflict is not.
    for per_token in fingerprints.values():
        assert len(set(per_token.values())) == len(per_token)


def test_resends_are_skipped_or_dead_lettered_as_conflicts(
    sc: Scenario, expected: model.Expected
) -> None:
    items = sc.items()
    conflicts = sum(1 for i in items if i.label == "conflict")

    assert list(expected.dead.values()).count("conflicting_duplicate") == conflicts
    assert len(expected.duplicates) == sum(1 for i in items if i.label == "duplicate")


def test_lots_that_expire_during_the_run_are_announced_then_forfeited(
    sc: Scenario, expected: model.Expected
) -> None:
    for account, kind in sc.categories.items():
        if kind != "expiry":
            continue
        lots = expected.accounts[account].lots
        kinds = [r.kind for r in expected.reminders.values() if r.account_id == account]

        assert len(lots) == 2
        assert all(lot.forfeited and lot.forfeited_jpy > 0 for lot in lots)
        assert kinds.count("credits_expiring") == 2
        assert kinds.count("credits_expired") == 2
        assert "balance_depleted" in kinds
        assert expected.accounts[account].balance_jpy == 0


def test_the_month_close_invoices_postpay_usage_of_the_ended_months(
    sc: Scenario, expected: model.Expected
) -> None:
    assert expected.invoices
    # Each ended month with postpay usage gets an invoice of its own, the earlier one too.
    periods = {i.period for i in expected.invoices.values()}
    assert {previous_period(sc.layout.period), sc.layout.period} <= periods
    assert all(line.period == i.period for i in expected.invoices.values() for line in i.lines)
    late = [
        c for c, inv in expected.postpay.values() if c.period == sc.layout.period and inv is None
    ]
    assert late, "late usage after the close waits for the next invoice"


# --- the comparison -------------------------------------------------------------------------


def actual_from(
    expected: model.Expected, inputs: dict[model.Position, bytes | None]
) -> check.Actual:
    """What a perfect worker would leave behind."""
    entries = defaultdict(list)
    for entry in expected.ledger.values():
        entries[entry.account_id].append(entry)
    a = check.Actual()
    a.views = {k: check.model_view(acc, entries[k]) for k, acc in expected.accounts.items()}
    a.processed = dict(expected.processed)
    a.postpay = {
        e: [
            c.account_id,
            c.period,
            c.country,
            c.unit_price_jpy,
            c.segments,
            c.amount_jpy,
            c.from_lots_jpy,
            inv,
        ]
        for e, (c, inv) in expected.postpay.items()
    }
    a.invoices = {
        k: [i.account_id, i.period, i.total_jpy, expected.paid.get(k, 0), i.due_date.isoformat()]
        for k, i in expected.invoices.items()
    }
    a.reminders = {
        k: [
            orjson.dumps(
                {
                    "reminder_id": k,
                    "account_id": r.account_id,
                    "kind": r.kind,
                    "balance": r.balance_jpy,
                    "threshold": r.threshold_jpy,
                    "email": r.email,
                    "lot_id": r.lot_id,
                    "amount": r.amount_jpy,
                }
            )
        ]
        for k, r in expected.reminders.items()
    }
    # The newest snapshot per account, as the worker encodes it for the compacted topic.
    a.balances = {
        k: wire_balance(balance_state(acc)).model_dump(mode="json")
        for k, acc in expected.accounts.items()
        if acc.version
    }
    a.invoice_messages = {
        k: [
            orjson.dumps(
                {
                    "invoice_id": k,
                    "account_id": i.account_id,
                    "period": i.period,
                    "total": i.total_jpy,
                    "due_date": i.due_date.isoformat(),
                    "payment_method": "bank_deposit",
                    "lines": [
                        {
                            "description": x.description,
                            "country": x.country,
                            "unit_price": x.unit_price_jpy,
                            "quantity": x.quantity,
                            "amount": x.amount_jpy,
                            "period": x.period,
                        }
                        for x in i.lines
                    ],
                }
            )
        ]
        for k, i in expected.invoices.items()
    }
    a.dead_letters = {
        p: [
            orjson.dumps(
                {
                    "error_code": code,
                    "reason": "why",
                    "payload_base64": base64.b64encode(inputs[p] or b"").decode(),
                }
            )
        ]
        for p, code in expected.dead.items()
    }
    a.outbox_ids = defaultdict(
        set,
        {
            "r": set(expected.reminders),
            "i": set(expected.invoices),
            "d": {f"dlq:{t}:{p}:{o}" for t, p, o in expected.dead},
        },
    )
    return a


@pytest.fixture
def perfect(
    sc: Scenario, expected: model.Expected
) -> tuple[check.Actual, dict[model.Position, bytes | None]]:
    inputs = {r.position: r.item.value for r in records(sc)}
    return actual_from(expected, inputs), inputs


def test_a_perfect_worker_has_no_mismatch(
    expected: model.Expected, perfect: tuple[check.Actual, dict[model.Position, bytes | None]]
) -> None:
    actual, inputs = perfect

    assert check.compare(expected, actual, inputs, TOPICS).mismatches == 0


def test_each_kind_of_difference_is_found(
    expected: model.Expected, perfect: tuple[check.Actual, dict[model.Position, bytes | None]]
) -> None:
    actual, inputs = perfect
    account = next(a for a, v in actual.views.items() if v["lots"])
    lot = next(iter(actual.views[account]["lots"]))
    actual.views[account]["lots"][lot][2] += 10
    actual.reminders.pop(next(iter(actual.reminders)))
    some_rid = next(iter(actual.reminders))
    actual.reminders[some_rid].append(actual.reminders[some_rid][0] + b" ")
    key = next(iter(actual.processed))
    topic, partition, offset = actual.processed[key]
    actual.processed[key] = (topic, partition, offset + 1)
    actual.dead_letters[(topic, partition, offset)] = actual.dead_letters[
        next(iter(actual.dead_letters))
    ]
    invoice = next(iter(actual.invoices))
    actual.invoices[invoice][3] += 1
    actual.outbox_unsent = 1
    snapshot = next(iter(actual.balances.values()))
    snapshot["credit"] += 1

    report = check.compare(expected, actual, inputs, TOPICS)

    assert report.counts["account"] == 1
    assert report.accounts[0][0] == account
    assert report.counts["reminder"] == 1
    assert report.counts["republished"] == 1
    assert report.counts["processed"] == 1
    assert report.counts["dlq"] >= 1
    assert report.counts["invoice"] == 1
    assert report.counts["outbox"] >= 1
    assert report.counts["balances"] == 1


def test_a_conflict_without_its_original_is_a_scenario_error(sc: Scenario) -> None:
    conflict = next(i for i in sc.items() if i.label == "conflict")
    alone = [model.Record(replace(conflict, seq=0), conflict.source, 0, 0)]

    with pytest.raises(ScenarioError, match="would be applied"):
        model.replay(alone, POLICY, sc.layout.period, 10**9, None)


def test_the_reference_model_agrees_with_the_chaos_expectation(
    sc: Scenario, expected: model.Expected
) -> None:
    outcomes = oracle_feed.replay(
        records(sc), POLICY, sc.layout.period, sc.close_seq, START + timedelta(hours=1)
    )
    assert sum(len(o.ledger) for o in outcomes) == len(expected.ledger) > 0
    assert oracle_feed.disagreements(records(sc), expected, outcomes) == []


# --- hostile records and the usage of expiring lots ------------------------------------------


def test_every_kind_of_hostile_record_goes_to_every_partition_of_both_inputs(sc: Scenario) -> None:
    hostile = [i for i in sc.items() if i.label.startswith("hostile:")]
    kinds = {i.label for i in hostile}
    codes = {i.label: i.dead_code for i in hostile}

    assert kinds == {
        f"hostile:{k}"
        for k in (
            "nul_key_not_json",
            "nul_key",
            "null_key",
            "empty_key",
            "another_accounts_key",
            "nul_in_account_id",
            "far_future",
            "before_2000",
            "ahead_of_arrival",
            "huge_value",
        )
    }
    assert codes["hostile:null_key"] == codes["hostile:nul_key"] == "key_mismatch"
    assert codes["hostile:far_future"] == codes["hostile:before_2000"] == "implausible_time"
    assert codes["hostile:ahead_of_arrival"] == "implausible_time"
    for kind in kinds:
        for source in ("usage", "account"):
            placed = {i.partition for i in hostile if i.label == kind and i.source == source}
            assert placed == set(range(6)), (kind, source)
    assert min(len(i.value or b"") for i in hostile if i.label == "hostile:huge_value") > 256 * 1024
    assert any(i.key is None for i in hostile)
    assert all("\x00" in (i.key or "") for i in hostile if i.label == "hostile:nul_key")


def arrived(sc: Scenario) -> list[model.Record]:
    """As a run produces them: one record a millisecond from the start (a re-send arrives
    after its original), in-time usage 4 s before its lot expires, too-late usage 10 s after
    the lateness allowance has passed."""
    out = []
    for n, item in enumerate(sc.items()):
        at = START + timedelta(milliseconds=n)
        if item.label == "in_time_usage" and item.expires is not None:
            at = item.expires - timedelta(seconds=4)
        elif item.label == "too_late_usage" and item.expires is not None:
            at = item.expires + POLICY.lateness + timedelta(seconds=10)
        out.append(model.Record(item, item.source, 0, n, at))
    return out


def test_a_lot_pays_usage_that_arrived_in_time_and_is_forfeited_before_usage_that_did_not(
    sc: Scenario,
) -> None:
    end = START + timedelta(hours=1)
    expected = model.replay(arrived(sc), POLICY, sc.layout.period, sc.close_seq, end)
    too_late = {i.key for i in sc.too_late}

    # Produced amid the run, it must hold back no later record of its partition, which the
    # worker releases in event-time order: it occurred before every record of `main`.
    assert max(i.at for i in sc.expiry_traffic if i.at) < min(i.at for i in sc.main if i.at)
    assert len(sc.in_time) == sum(1 for k in sc.categories.values() if k == "expiry")
    assert 0 < len(too_late) < len(sc.in_time)
    for item in sc.in_time:
        account = item.key
        assert account is not None
        entries = [e for e in expected.ledger.values() if e.account_id == account]
        in_time = next(e for e in entries if e.ref == item.command.event_id)  # type: ignore[union-attr]
        # The first lot (the test credits, expiring first) pays it, though it is applied late.
        assert [lot for lot, _ in in_time.allocations] == [
            expected.accounts[account].lots[0].lot_id
        ]
        kinds = [e.kind for e in entries]
        if account in too_late:
            # Both lots forfeited right before it; it is overdraft.
            assert kinds[-3:] == ["forfeit", "forfeit", "charge"]
            assert entries[-1].allocations == ()
            assert entries[-1].balance_after_jpy == expected.accounts[account].balance_jpy == -10
        else:
            assert kinds[-2:] == ["forfeit", "forfeit"]
            assert expected.accounts[account].balance_jpy == 0
    outcomes = oracle_feed.replay(arrived(sc), POLICY, sc.layout.period, sc.close_seq, end)
    assert oracle_feed.disagreements(arrived(sc), expected, outcomes) == []


@pytest.mark.parametrize(("events", "accounts", "seed"), [(20_000, 400, 11), (4000, 150, 12)])
def test_other_seeds_lay_out_every_hostile_record_and_the_expiry_traffic(
    events: int, accounts: int, seed: int
) -> None:
    # Seed 11 at the reduced run's size has a poison record (no time) amid the main phase,
    # where the hostile records take their time from.
    other = build(
        Params(events=events, accounts=accounts, seed=seed),
        START,
        POLICY,
        load_rate_table(None),
        ZoneInfo("Asia/Tokyo"),
    )

    assert sum(1 for i in other.items() if i.label.startswith("hostile:")) == 10 * 2 * 6
    assert other.in_time
    assert other.too_late
