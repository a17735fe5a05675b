"""The domain against the plain reference model (chaos/oracle.py) on generated histories.

Histories are in log order: records carry their Kafka timestamp (`arrived_at`, strictly
increasing), usage may have occurred long before it arrived (late, out of order), accounts
interleave, and the expiry timer, month closes and invoice payments fall in between.
"""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chaos import oracle
from chaos.oracle import Close, Event, Step, Tick
from tests.unit.builders import POLICY, T0, examples
from worker.adapters.rates import load_rate_table
from worker.adapters.wire import Decoder
from worker.domain.account import Account, OpenInvoice
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PayInvoice,
    PurchaseCredits,
    SwitchToPostpay,
)
from worker.domain.expiry import sweep
from worker.domain.invoicing import build_invoice, closing_window
from worker.domain.rating import Rated
from worker.service.billing import BatchReport, _apply_one, expiry_bounds
from worker.service.ports import Changes, Dead, Decoded, EventKey, InputRecord

ACCOUNTS = ("acc-a", "acc-b")
RULES = oracle.Rules()
MICRO = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_the_oracle_imports_nothing_from_the_worker() -> None:
    path = Path(oracle.__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names, "the check must see the imports"
    assert not [n for n in names if n == "worker" or n.startswith(("worker.", "tests"))]


# -- the domain, driven the way the service drives it -----------------------------------------


def charge_command(event: Event) -> ChargeUsage:
    rated = Rated(event.country, event.unit_price_jpy, event.segments)
    return ChargeUsage(
        event.event_id, event.account_id, event.occurred_at, rated, arrived_at=event.arrived_at
    )


def command_of(event: Event) -> Command:
    common = (event.event_id, event.account_id, event.occurred_at)
    if event.kind == "usage":
        return charge_command(event)
    if event.kind == "account_opened":
        return OpenAccount(*common, event.test_credits_jpy)
    if event.kind == "credits_purchased":
        return PurchaseCredits(
            *common, f"p-{event.event_id}", event.amount_jpy, event.payment_method
        )
    if event.kind == "reminder_configured":
        return ConfigureReminder(*common, event.enabled, event.threshold_jpy, event.email)
    if event.kind == "switched_to_postpay":
        return SwitchToPostpay(*common, event.contract_id)
    return PayInvoice(*common, event.invoice_id, event.amount_jpy)


def wire_identity(event: Event) -> bytes:
    """What the decoder's fingerprint stands for: the payload, not when it reached Kafka."""
    return repr(dataclasses.replace(event, arrived_at=event.occurred_at, key=None)).encode()


class Domain:
    """The domain driven the way the service drives it: each record through `_apply_one` (its
    de-duplication, the expiry due before the record arrived, Account.apply), the expiry
    sweep on timer ticks and the month close."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.changes = Changes()
        self.effects = self.changes.effects
        self.seen: dict[EventKey, bytes] = {}
        self.dead: dict[str, str] = {}
        self.invoiced: set[str] = set()
        self.invoices: dict[str, Any] = {}

    def run(self, steps: list[Step]) -> Domain:
        for n, step in enumerate(steps):
            if isinstance(step, Tick):
                for account_id in sorted(self.accounts):
                    sweep(self.accounts[account_id], step.now, POLICY, self.effects)
            elif isinstance(step, Close):
                for account_id in sorted(self.accounts):
                    self.close(self.accounts[account_id], step.period)
            else:
                self.apply(step, n)
        return self

    def apply(self, event: Event, offset: int) -> None:
        ms = (event.arrived_at - EPOCH) // timedelta(milliseconds=1)
        record = InputRecord(
            "usage" if event.source == "usage" else "account",
            event.source,
            0,
            offset,
            event.account_id.encode(),
            b"",
            ms,
        )
        item = Decoded(record, command_of(event), wire_identity(event))
        # A one-record batch with nothing pending: the bound is the record's own arrival.
        (bound,) = expiry_bounds([item], None)
        account = self.accounts.setdefault(event.account_id, Account(event.account_id))
        report = BatchReport()
        _apply_one(item, bound, account, self.seen, POLICY, self.changes, report)
        for dead in report.dead:
            self.dead[event.event_id] = dead.code

    def close(self, account: Account, period: str) -> None:
        for month in closing_window(period):
            usage = [
                c
                for c in self.effects.postpay
                if c.account_id == account.account_id
                and c.period <= month
                and c.event_id not in self.invoiced
            ]
            invoice = build_invoice(account.account_id, month, usage, POLICY.zone)
            if invoice is None:
                continue
            self.invoices[invoice.invoice_id] = invoice
            account.invoices[invoice.invoice_id] = OpenInvoice(
                invoice.invoice_id, invoice.total_jpy
            )
            self.invoiced |= {c.event_id for c in usage}


def domain_view(d: Domain) -> dict[str, Any]:
    return {
        "ledger": [
            (e.entry_id, e.account_id, e.kind, e.amount_jpy, e.balance_after_jpy, e.allocations)
            for e in d.effects.ledger
        ],
        "reminders": [
            (
                *(r.reminder_id, r.account_id, r.kind, r.balance_jpy, r.threshold_jpy),
                *(r.lot_id, r.amount_jpy, r.email),
            )
            for r in d.effects.reminders
        ],
        "invoices": {
            i.invoice_id: (
                i.total_jpy,
                i.due_date,
                [
                    (x.description, x.country, x.unit_price_jpy, x.quantity, x.amount_jpy, x.period)
                    for x in i.lines
                ],
            )
            for i in d.invoices.values()
        },
        "dead": d.dead,
        "accounts": {
            a.account_id: (
                a.balance_jpy,
                a.overdraft_jpy,
                a.postpay_due_jpy,
                a.plan,
                {x.invoice_id: x.paid_jpy for x in a.invoices.values()},
                [(x.lot_id, x.remaining_jpy, x.forfeited_jpy, x.forfeited) for x in a.lots],
            )
            for a in d.accounts.values()
        },
    }


def oracle_view(o: oracle.Outcome) -> dict[str, Any]:
    return {
        "ledger": [
            (e.entry_id, e.account_id, e.kind, e.amount_jpy, e.balance_after_jpy, e.allocations)
            for e in o.ledger
        ],
        "reminders": [
            (
                *(r.reminder_id, r.account_id, r.kind, r.balance_jpy, r.threshold_jpy),
                *(r.lot_id, r.amount_jpy, r.email),
            )
            for r in o.reminders
        ],
        "invoices": {i.invoice_id: (i.total_jpy, i.due_date, i.lines) for i in o.invoices.values()},
        "dead": o.dead,
        "accounts": {
            a.account_id: (
                oracle.balance(a),
                a.overdraft_jpy,
                a.postpay_due_jpy,
                a.plan,
                {x.invoice_id: x.paid_jpy for x in a.invoices.values()},
                [(x.lot_id, x.remaining_jpy, x.forfeited_jpy, x.closed) for x in a.lots],
            )
            for a in o.accounts.values()
        },
    }


def assert_agree(steps: list[Step]) -> None:
    want = oracle_view(oracle.run(steps, RULES))
    got = domain_view(Domain().run(steps))
    for part in want:
        assert got[part] == want[part], part


# -- generating histories ---------------------------------------------------------------------

KINDS = (
    ["usage"] * 8
    + ["credits_purchased"] * 3
    + ["tick"] * 2
    + ["account_opened", "reminder_configured", "switched_to_postpay", "invoice_paid"]
    + ["close", "again"]
)
ARGS: dict[str, st.SearchStrategy[Any]] = {
    "usage": st.tuples(
        st.sampled_from([("JP", 10), ("US", 7)]), st.one_of(st.integers(1, 5), st.integers(1, 40))
    ),
    "credits_purchased": st.sampled_from(
        [(1_000, "credit_card"), (2_000, "credit_card"), (101_000, "invoice")] * 3
        + [(1_500, "credit_card"), (100_000, "invoice")]
    ),
    "tick": st.none(),
    "account_opened": st.sampled_from([None, 0, 100, 1_000]),
    "reminder_configured": st.tuples(st.booleans(), st.sampled_from([0, 100, 500, 1_000, 2_000])),
    "switched_to_postpay": st.none(),
    "invoice_paid": st.tuples(st.integers(0, 2), st.sampled_from([10, 200])),
    "close": st.none(),
    "again": st.integers(0, 1_000),
}


@st.composite
def raw_step(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(KINDS))
    return (
        draw(st.sampled_from(ACCOUNTS)),
        # seconds until this record reaches Kafka: together, around the lateness, days, months
        draw(
            st.one_of(
                st.integers(1, 60),
                st.integers(60, 7_200),
                st.integers(1, 86_400 * 3),
                st.sampled_from([3_540, 3_600, 3_660, 86_400 * 7, 86_400 * 45]),
            )
        ),
        # how long before arriving the event occurred: on time, late, very late
        draw(st.one_of(st.just(0), st.integers(0, 7_200), st.integers(0, 86_400 * 3))),
        (kind, draw(ARGS[kind])),
    )


def build(raw: list[tuple[Any, ...]], wind_down: bool, gated: bool) -> list[Step]:
    """Steps in log order. `gated` puts a timer tick just before every record (the timer gets
    to each expiry first); without it the expiry due before a record comes in front of it
    from the record's own arrival (the stream gets there first): both must bill the same."""
    steps: list[Step] = []
    events: list[Event] = []
    arrived = T0
    for n, (account_id, gap_s, delay_s, (kind, arg)) in enumerate(raw):
        arrived += timedelta(seconds=gap_s)
        if kind == "tick":
            steps.append(Tick(arrived))
            arrived += timedelta(seconds=1)  # later records arrive after the tick
            continue
        if kind == "close":
            closed = oracle.period_of(arrived, RULES.zone)
            steps.append(Close(previous(closed)))
            continue
        if kind != "again":
            event = new_event(n, account_id, arrived, delay_s, kind, arg)
            events.append(event)
        elif events:
            # A re-send: the same payload, reaching Kafka again now.
            event = dataclasses.replace(events[cast(int, arg) % len(events)], arrived_at=arrived)
        else:
            continue
        if gated:
            steps.append(Tick(arrived - MICRO))
        steps.append(event)
    if wind_down:
        steps += [Tick(arrived + timedelta(days=84)), Tick(arrived + timedelta(days=92))]
        steps.append(Close(oracle.period_of(arrived + timedelta(days=92), RULES.zone)))
    return steps


def new_event(
    n: int, account_id: str, arrived: datetime, delay_s: int, kind: str, arg: Any
) -> Event:
    """The n-th record of a history; usage may have occurred `delay_s` before it arrived."""
    occurred = arrived - timedelta(seconds=delay_s) if kind == "usage" else arrived
    source = "usage" if kind == "usage" else "account"
    fields = fields_of(kind, arg, account_id, arrived)
    return Event(source, kind, f"e{n}", account_id, occurred, arrived, **fields)


def fields_of(kind: str, arg: Any, account_id: str, arrived: datetime) -> dict[str, Any]:
    """The wire fields of one generated event."""
    if kind == "account_opened":
        return {"test_credits_jpy": arg}
    if kind == "credits_purchased":
        return {"amount_jpy": arg[0], "payment_method": arg[1]}
    if kind == "reminder_configured":
        return {"enabled": arg[0], "threshold_jpy": arg[1], "email": f"{account_id}@x.jp"}
    if kind == "switched_to_postpay":
        return {"contract_id": f"c-{account_id}"}
    if kind == "invoice_paid":
        months_back, amount = arg
        period = oracle.period_of(arrived, RULES.zone)
        for _ in range(months_back + 1):
            period = previous(period)
        return {"invoice_id": f"INV-{period}-{account_id}", "amount_jpy": amount}
    (country, price), segments = arg
    return {
        "country": country,
        "unit_price_jpy": price,
        "segments": segments,
        "amount_jpy": price * segments,
    }


def previous(period: str) -> str:
    return oracle.months_up_to(period, 2)[0]


def histories(gated: bool) -> st.SearchStrategy[list[Step]]:
    return st.builds(
        build, st.lists(raw_step(), min_size=5, max_size=60), st.booleans(), st.just(gated)
    )


@settings(max_examples=examples(300), deadline=None)
@given(histories(gated=True))
def test_the_domain_agrees_with_the_reference_model(steps: list[Step]) -> None:
    assert_agree(steps)


# -- hand-picked histories at the edges of the rules -------------------------------------------

LOT_EXPIRES = T0 + timedelta(days=90)


def ev(kind: str, n: int, arrived: datetime, occurred: datetime | None = None, **kw: Any) -> Event:
    source = "usage" if kind == "usage" else "account"
    at = arrived if occurred is None else occurred
    return Event(source, kind, f"x{n}", "acc-a", at, arrived, **kw)


LATE_PAST_ALLOWANCE: list[Step] = [
    ev("account_opened", 1, T0, test_credits_jpy=1_000),
    # occurred a minute before the lot expired, reached Kafka two hours after: overdraft
    ev(
        "usage",
        2,
        LOT_EXPIRES + timedelta(hours=2),
        LOT_EXPIRES - timedelta(minutes=1),
        amount_jpy=100,
        segments=10,
    ),
    Tick(LOT_EXPIRES + timedelta(hours=3)),
]
UNCHANGED_SETTING: list[Step] = [
    ev("account_opened", 1, T0, test_credits_jpy=100),
    ev("reminder_configured", 2, T0 + MICRO, enabled=True, threshold_jpy=500, email="a@x.jp"),
    ev("reminder_configured", 3, T0 + 2 * MICRO, enabled=True, threshold_jpy=500, email="a@x.jp"),
]


def test_a_lot_does_not_pay_for_usage_that_reached_kafka_after_its_allowance() -> None:
    assert_agree(LATE_PAST_ALLOWANCE)


def test_a_reminder_setting_that_changes_nothing_sends_nothing() -> None:
    assert_agree(UNCHANGED_SETTING)


@settings(max_examples=examples(300), deadline=None)
@given(histories(gated=False))
@example(LATE_PAST_ALLOWANCE)
@example(UNCHANGED_SETTING)
def test_the_domain_agrees_with_the_reference_model_on_ungated_histories(
    steps: list[Step],
) -> None:
    assert_agree(steps)


def test_the_model_itself_on_a_hand_worked_history() -> None:
    """The oracle's own expected values, by hand: grants, debit order, overdraft, forfeit."""
    steps: list[Step] = [
        ev("account_opened", 1, T0, test_credits_jpy=100),
        ev("credits_purchased", 2, T0 + timedelta(days=10), amount_jpy=1_000),
        ev("usage", 3, T0 + timedelta(days=11), amount_jpy=150, segments=15),
        ev("usage", 4, T0 + timedelta(days=95), amount_jpy=50, segments=5),
        Tick(T0 + timedelta(days=96)),
        Tick(T0 + timedelta(days=101)),
    ]
    out = oracle.run(steps)
    entries = [(e.entry_id, e.amount_jpy, e.balance_after_jpy, e.allocations) for e in out.ledger]
    assert entries == [
        ("grant:x1", 100, 100, ()),
        ("grant:x2", 1_000, 1_100, ()),
        ("charge:x3", -150, 950, (("lot:x1", 100), ("lot:x2", 50))),
        ("charge:x4", -50, 900, (("lot:x2", 50),)),
        ("forfeit:lot:x2", -900, 0, ()),
    ]
    # lot x2's notice (due on day 93) goes in front of x4, which arrived on day 95; lot x1 is
    # empty by then, so it gets none, and its forfeit loses nothing
    assert [(r.reminder_id, r.balance_jpy, r.amount_jpy) for r in out.reminders] == [
        ("acc-a:credits_expiring:lot:x2", 950, 950),
        ("acc-a:credits_expired:lot:x2", 0, 900),
        ("acc-a:balance_depleted:forfeit:lot:x2", 0, None),
    ]
    assert_agree(steps)


def test_a_notice_the_timer_reaches_only_after_expiry_is_sent_before_the_forfeit() -> None:
    """By hand: after day 6 the timer next runs on day 100. Lot x1 (JPY 200 left, expires
    day 90) and lot x3 (JPY 1,000, expires day 95) each still get their notice, and all four
    go in the order of their moments: x1's notice (day 83), x3's (day 88), x1's forfeit
    (day 90 + 1 h), x3's (day 95 + 1 h)."""
    steps: list[Step] = [
        ev("account_opened", 1, T0, test_credits_jpy=300),
        ev("reminder_configured", 2, T0 + MICRO, enabled=True, threshold_jpy=100, email="a@x.jp"),
        ev("credits_purchased", 3, T0 + timedelta(days=5), amount_jpy=1_000),
        ev("usage", 4, T0 + timedelta(days=6), amount_jpy=100, segments=10),
        Tick(T0 + timedelta(days=100)),
    ]
    out = oracle.run(steps)
    assert [(e.entry_id, e.amount_jpy, e.balance_after_jpy, e.allocations) for e in out.ledger] == [
        ("grant:x1", 300, 300, ()),
        ("grant:x3", 1_000, 1_300, ()),
        ("charge:x4", -100, 1_200, (("lot:x1", 100),)),
        ("forfeit:lot:x1", -200, 1_000, ()),
        ("forfeit:lot:x3", -1_000, 0, ()),
    ]
    assert [(r.reminder_id, r.balance_jpy, r.amount_jpy) for r in out.reminders] == [
        ("acc-a:credits_expiring:lot:x1", 1_200, 200),
        ("acc-a:credits_expiring:lot:x3", 1_200, 1_000),
        ("acc-a:credits_expired:lot:x1", 1_000, 200),
        ("acc-a:credits_expired:lot:x3", 0, 1_000),
        ("acc-a:low_balance:forfeit:lot:x3", 0, None),
        ("acc-a:balance_depleted:forfeit:lot:x3", 0, None),
    ]
    assert_agree(steps)


# -- rules the wire decoder applies --------------------------------------------------------------

FAR = datetime(9000, 1, 1, 1, tzinfo=UTC)
WIRE_CASES = [
    # key, occurred_at, arrived_at
    (b"acc-a", "2026-01-05T03:00:00+00:00", T0),
    (None, "2026-01-05T03:00:00+00:00", T0),
    (b"acc-b", "2026-01-05T03:00:00+00:00", T0),
    (b"acc-a\x00", "2026-01-05T03:00:00+00:00", T0),
    (b"acc-a", "1999-12-31T23:59:59+00:00", T0),
    (b"acc-a", "2026-01-06T03:00:01+00:00", T0),
    (b"acc-a", "2026-01-06T03:00:00+00:00", T0),
    (b"acc-a", "9999-10-02T23:30:00+00:00", T0),
    # from year 9000 on, whatever the record timestamp says
    (b"acc-a", "8999-12-31T23:59:59+00:00", FAR),
    (b"acc-a", "9000-01-01T00:00:00+00:00", FAR),
]


def oracle_code(key: bytes | None, occurred: str, arrived: datetime) -> str | None:
    try:
        text_key = None if key is None else key.decode()
    except UnicodeDecodeError:
        return "key_mismatch"
    event = Event(
        "usage",
        "usage",
        "u1",
        "acc-a",
        datetime.fromisoformat(occurred),
        arrived,
        key="" if key is None else text_key,
    )
    if not oracle.key_matches(event):
        return "key_mismatch"
    if not oracle.plausible_time(event, RULES):
        return "implausible_time"
    return None


def test_the_decoder_refuses_keys_and_times_the_reference_model_refuses() -> None:
    decoder = Decoder(load_rate_table(None))
    got, want = [], []
    for offset, (key, occurred, arrived) in enumerate(WIRE_CASES):
        value = orjson.dumps(
            {
                "event_id": f"u{offset}",
                "account_id": "acc-a",
                "occurred_at": occurred,
                "destination": "+819012345678",
            }
        )
        ms = int(arrived.timestamp() * 1000)
        decoded = decoder(InputRecord("usage", "t", 0, offset, key, value, ms))
        got.append(decoded.code if isinstance(decoded, Dead) else None)
        want.append(oracle_code(key, occurred, arrived))
    mismatch, implausible = "key_mismatch", "implausible_time"
    assert want == [
        *(None, mismatch, mismatch, mismatch),
        *(implausible, implausible, None, implausible),
        *(None, implausible),
    ]
    assert got == want


# -- invariants of what the domain produced, stated on their own --------------------------------


@settings(max_examples=examples(150), deadline=None)
@given(
    st.builds(build, st.lists(raw_step(), min_size=5, max_size=60), st.just(True), st.just(True))
)
def test_postpay_invoices_add_up_and_every_lot_ends_empty(steps: list[Step]) -> None:
    d = Domain().run(steps)
    charges = {c.event_id: c for c in d.effects.postpay}
    on_invoice: dict[str, list[str]] = {}
    for invoice in d.invoices.values():
        period = invoice.period
        # which charges this invoice covers: its usage lines' periods up to its own
        mine = [
            c
            for c in charges.values()
            if c.account_id == invoice.account_id
            and c.period <= period
            and not any(c.event_id in v for k, v in on_invoice.items() if k != invoice.invoice_id)
        ]
        lines = [x for x in invoice.lines if x.country is not None]
        assert sum(x.amount_jpy for x in lines) == sum(c.amount_jpy for c in mine)
        assert invoice.total_jpy == sum(c.amount_jpy - c.from_lots_jpy for c in mine)
        assert {x.period for x in lines} == {c.period for c in mine}
        for x in lines:
            late = x.period < period
            assert ("late usage from" in x.description) == late
        on_invoice[invoice.invoice_id] = [c.event_id for c in mine]
    # after the last close every postpay charge is on exactly one invoice
    counted = sorted(e for ids in on_invoice.values() for e in ids)
    assert counted == sorted(charges)
    # after the last sweep every lot is empty, and what it lost was announced once
    expired = [r for r in d.effects.reminders if r.kind == "credits_expired"]
    assert len({r.lot_id for r in expired}) == len(expired)
    announced = {r.lot_id: r.amount_jpy for r in expired}
    for account in d.accounts.values():
        for lot in account.lots:
            assert lot.remaining_jpy == 0
            assert lot.forfeited
            if lot.forfeited_jpy:
                assert announced[lot.lot_id] == lot.forfeited_jpy
