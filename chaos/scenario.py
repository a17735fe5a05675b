"""A seeded chaos scenario: every record to produce, in production order, and what it means.

The layout makes the worker's result a function of the input alone:

- Every account's events have strictly increasing `occurred_at` across both topics, and each
  topic-partition receives them in time order, so the worker's event-time alignment has one
  answer. The exceptions are re-sends (no-ops or dead letters whatever their position) and
  "late" postpay usage, sent only to accounts that get nothing else after their history.
- Phase 0 is produced before any worker runs: the lives of the accounts whose lots expire
  during the run (nothing happens to them afterwards, so forfeiture timing changes nothing),
  and the postpay accounts' usage in the two months that have already ended.
- Records after the close gate (invoice payments, late usage) are produced only once the month
  is closed, so they cannot race the close.
- Hostile records (NUL, null, empty and foreign keys, dates before 2000, far in the future or
  ahead of their arrival, values larger than a dead letter keeps) go to every partition of both
  inputs; each must be dead-lettered with its code and hold nothing up.
- Expiry traffic: each account whose lots expire during the run gets one usage event produced
  just before its lots expire (it arrives in time: a lot pays it), and every other one a usage
  event produced only once the lots were forfeited (it arrived too late: overdraft). Both
  occurred during the lots' life, right after the account's history (~90 days ago), so
  neither holds back a later record of its partition in the worker's event-time order. The
  runner produces them at those moments, while the workers of the run are down for longer
  than the lateness allowance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from worker.domain.account import Policy
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PayInvoice,
    PurchaseCredits,
    SwitchToPostpay,
)
from worker.domain.invoicing import period_bounds, period_of, previous_period
from worker.domain.rating import Rated, RateTable, destination_country

Source = Literal["usage", "account"]

# Numbers whose region phonenumbers resolves; JP (JPY 10) dominates as on the real platform.
DESTINATIONS = (
    ("+819012345678", 8),
    ("+818012345678", 5),
    ("+817012345678", 3),
    ("+81312345678", 2),
    ("+12025550123", 1),
    ("+821012345678", 1),
    ("+6591234567", 1),
    ("+639171234567", 1),
    ("+447400123456", 1),
)
# A value larger than the 256 KiB a dead letter keeps of it.
HUGE_VALUE_BYTES = 300_000
NO_RATE_NUMBER = "+33612345678"  # France: no rate in the shipped table
UNKNOWN_NUMBER = "+99912345678"  # no country at all


# Both input topics of a run (chaos.kafka_io.Topics) have this many partitions.
INPUT_PARTITIONS = 6


class ScenarioError(Exception):
    """The scenario cannot be laid out now (e.g. the month has only just begun)."""


@dataclass(frozen=True)
class Params:
    events: int = 200_000
    accounts: int = 2_000
    seed: int = 7
    poison_share: float = 0.015
    duplicate_share: float = 0.01
    # Lots of the expiring accounts expire between these many seconds after the layout:
    # late enough for phase 0 to be applied first, early enough to fall amid the chaos.
    expiry_from_s: float = 40.0
    expiry_spread_s: float = 50.0


@dataclass(frozen=True)
class Item:
    """One record to produce and what the worker must make of it."""

    seq: int
    source: Source
    key: str | None
    value: bytes | None
    label: str
    dead_code: str | None  # refused when decoded (never reaches an account)
    command: Command | None
    token: int  # payload identity: equal only for re-sends of the same event
    at: datetime | None
    after_close: bool = False
    partition: int | None = None  # produced to this partition (else by the key's hash)
    expires: datetime | None = None  # expiry traffic: the expiry of the account's first lot


@dataclass(frozen=True)
class Layout:
    start: datetime
    zone: ZoneInfo
    period: str  # the latest ended month: the one the run closes
    history: tuple[datetime, datetime]  # postpay usage in the two ended months
    main: tuple[datetime, datetime]  # ordinary traffic, in the current month


@dataclass
class Scenario:
    params: Params
    layout: Layout
    phase0: list[Item]
    main: list[Item]
    categories: dict[str, str]  # account -> expiry | postpay | late | implicit | normal
    expiries: list[datetime] = field(default_factory=list)
    # Produced by the runner at their moments (see the module docstring), after `main`.
    expiry_traffic: list[Item] = field(default_factory=list)

    @property
    def close_seq(self) -> int:
        """Records from this seq on are produced only after the month was closed."""
        return next((i.seq for i in self.main if i.after_close), self.main[-1].seq + 1)

    def items(self) -> list[Item]:
        return self.phase0 + self.main + self.expiry_traffic

    @property
    def in_time(self) -> list[Item]:
        return [i for i in self.expiry_traffic if i.label == "in_time_usage"]

    @property
    def too_late(self) -> list[Item]:
        return [i for i in self.expiry_traffic if i.label == "too_late_usage"]


def lay_out(start: datetime, zone: ZoneInfo) -> Layout:
    current = period_of(start, zone)
    period = previous_period(current)
    current_start, _ = period_bounds(current, zone)
    before_start, _ = period_bounds(previous_period(period), zone)
    second = timedelta(seconds=1)
    # Lots granted after start - 83 days never enter the 7-day notice window during the run.
    history = (max(before_start, start - timedelta(days=80)) + second, current_start - second)
    main = (current_start + second, start - timedelta(minutes=2))
    if main[1] - main[0] < timedelta(minutes=2):
        raise ScenarioError(f"{current} began too recently for a scenario in it; retry later")
    return Layout(start, zone, period, history, main)


class _Gen:
    """Builds records: payload bytes, the command they decode to, a label."""

    def __init__(self, rnd: random.Random, rates: RateTable) -> None:
        self.rnd = rnd
        self.rates = rates
        self.counter = 0
        self.rejects = 0
        self.countries: dict[tuple[str | None, str], str | None] = {}

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    def stamp(self, at: datetime) -> str:
        zone = UTC if self.rnd.random() < 0.7 else ZoneInfo("Asia/Tokyo")
        return at.astimezone(zone).isoformat()

    def times(self, n: int, lo: datetime, hi: datetime) -> list[datetime]:
        """n strictly increasing instants in [lo, hi].

        Fractions of the window, so a seed draws the same numbers whatever the date: the
        records come out the same up to their timestamps.
        """
        span_us = max(int((hi - lo) / timedelta(microseconds=1)), n)
        offsets = sorted(int(self.rnd.random() * span_us) for _ in range(n))
        for i in range(1, n):
            offsets[i] = max(offsets[i], offsets[i - 1] + 1)
        return [lo + timedelta(microseconds=o) for o in offsets]

    def _item(
        self,
        source: Source,
        payload: dict[str, Any],
        label: str,
        command: Command | None,
        at: datetime,
        dead: str | None = None,
    ) -> Item:
        return Item(
            -1,
            source,
            payload["account_id"],
            orjson.dumps(payload),
            label,
            dead,
            command,
            self.next_id(),
            at,
        )

    def usage(
        self, account: str, at: datetime, number: str | None = None, segments: int | None = None
    ) -> Item:
        rnd = self.rnd
        number = (
            number or rnd.choices([d for d, _ in DESTINATIONS], [w for _, w in DESTINATIONS])[0]
        )
        segments = segments or rnd.choices([1, 2, 3, 4], [70, 18, 8, 4])[0]
        event_id = f"{account}-u{self.counter + 1}"
        payload: dict[str, Any] = {
            "event_id": event_id,
            "account_id": account,
            "occurred_at": self.stamp(at),
            "destination": number,
        }
        if segments != 1 or rnd.random() < 0.5:
            payload["segments"] = segments
        if number.startswith("+81") and rnd.random() < 0.2:
            payload["country"] = "JP"
        if rnd.random() < 0.1:
            payload["message_id"] = f"m-{self.counter}"
        if rnd.random() < 0.02:
            payload["carrier"] = "unknown extra field, ignored"
        return self._item(
            "usage",
            payload,
            "usage",
            ChargeUsage(event_id, account, at, self.rate(payload, at)),
            at,
        )

    def rate(self, payload: dict[str, Any], at: datetime) -> Rated:
        """The domain's rating, with the (slow) number parsing done once per number."""
        where = (payload.get("country"), payload["destination"])
        if where not in self.countries:
            self.countries[where] = destination_country(*where)
        country = self.countries[where]
        price = None if country is None else self.rates.unit_price(country, at)
        if country is None or price is None:
            raise ScenarioError(f"no rate for {where} at {at}: not a valid usage event")
        return Rated(country, price, payload.get("segments", 1))

    def _account_event(
        self, kind: str, account: str, at: datetime, fields: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        event_id = f"{account}-{kind[:3]}{self.counter + 1}"
        return event_id, {
            "type": kind,
            "event_id": event_id,
            "account_id": account,
            "occurred_at": self.stamp(at),
            **fields,
        }

    def opened(self, account: str, at: datetime, credits: int | None) -> Item:
        event_id, payload = self._account_event(
            "account_opened", account, at, {} if credits is None else {"test_credits": credits}
        )
        return self._item(
            "account", payload, "open", OpenAccount(event_id, account, at, credits), at
        )

    def purchase(
        self,
        account: str,
        at: datetime,
        amount: int,
        method: str = "credit_card",
        label: str = "purchase",
    ) -> Item:
        event_id, payload = self._account_event(
            "credits_purchased",
            account,
            at,
            {"purchase_id": f"p-{self.counter + 1}", "amount": amount, "payment_method": method},
        )
        command = PurchaseCredits(event_id, account, at, payload["purchase_id"], amount, method)
        return self._item("account", payload, label, command, at)

    def reminder(self, account: str, at: datetime, enabled: bool, threshold: int) -> Item:
        email = f"billing+{account}@example.jp" if enabled or self.rnd.random() < 0.5 else None
        event_id, payload = self._account_event(
            "reminder_configured",
            account,
            at,
            {"enabled": enabled, "threshold": threshold, "email": email},
        )
        command = ConfigureReminder(event_id, account, at, enabled, threshold, email)
        return self._item("account", payload, "reminder", command, at)

    def switch(self, account: str, at: datetime, label: str = "switch") -> Item:
        event_id, payload = self._account_event(
            "switched_to_postpay", account, at, {"contract_id": f"c-{account}"}
        )
        return self._item(
            "account", payload, label, SwitchToPostpay(event_id, account, at, f"c-{account}"), at
        )

    def pay(
        self, account: str, at: datetime, invoice_id: str, amount: int, label: str = "payment"
    ) -> Item:
        event_id, payload = self._account_event(
            "invoice_paid", account, at, {"invoice_id": invoice_id, "amount": amount}
        )
        command = PayInvoice(event_id, account, at, invoice_id, amount)
        return replace(self._item("account", payload, label, command, at), after_close=True)

    def reject(self, account: str, at: datetime, opened: bool) -> Item:
        """A well-formed event the rules refuse (dead-lettered by the domain)."""
        self.rejects += 1
        choice = self.rnd.randrange(3 if opened else 2)
        if choice == 0:
            return self.purchase(
                account, at, 1000 * self.rnd.randint(1, 9) + 500, label="reject:invalid_amount"
            )
        if choice == 1:
            return self.purchase(
                account,
                at,
                1000 * self.rnd.randint(1, 100),
                "invoice",
                label="reject:invoice_purchase_too_small",
            )
        return replace(self.opened(account, at, None), label="reject:already_opened")

    # --- records that never decode ------------------------------------------------------

    def poison(self, account: str, at: datetime) -> Item:
        n = self.next_id()
        stamp = self.stamp(at)
        builders: list[Callable[[], tuple[Source, bytes | None, str, str]]] = [
            lambda: (
                "usage",
                f'{{"event_id": "{account}-x{n}", "account_id": '.encode(),
                "malformed_json",
                "truncated_json",
            ),
            lambda: (
                "account",
                b"\xff\xfe<not json " + str(n).encode(),
                "malformed_json",
                "binary_garbage",
            ),
            lambda: (self.rnd.choice(["usage", "account"]), None, "malformed_json", "tombstone"),
            lambda: (
                "usage",
                _json(
                    {
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp,
                        "destination": "+819012345678",
                        "segments": "2",
                    }
                ),
                "schema_violation",
                "wrong_type",
            ),
            lambda: (
                "usage",
                _json(
                    {
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp[:19],
                        "destination": "+819012345678",
                    }
                ),
                "schema_violation",
                "naive_timestamp",
            ),
            lambda: (
                "usage",
                _json({"event_id": f"{account}-x{n}", "account_id": account, "occurred_at": stamp}),
                "schema_violation",
                "missing_field",
            ),
            lambda: (
                "account",
                _json(
                    {
                        "type": "credits_purchased",
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp,
                        "purchase_id": f"px{n}",
                        "amount": "1000",
                        "payment_method": "credit_card",
                    }
                ),
                "schema_violation",
                "wrong_type",
            ),
            lambda: (
                "account",
                _json({"event_id": f"{account}-x{n}", "account_id": account, "occurred_at": stamp}),
                "schema_violation",
                "no_type",
            ),
            lambda: ("account", _json([n, account]), "schema_violation", "not_an_object"),
            lambda: (
                "account",
                _json(
                    {
                        "type": "account_closed",
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp,
                    }
                ),
                "unknown_type",
                "unknown_type",
            ),
            lambda: (
                "usage",
                _json(
                    {
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp,
                        "destination": NO_RATE_NUMBER,
                    }
                ),
                "no_rate",
                "no_rate",
            ),
            lambda: (
                "usage",
                _json(
                    {
                        "event_id": f"{account}-x{n}",
                        "account_id": account,
                        "occurred_at": stamp,
                        "destination": UNKNOWN_NUMBER,
                    }
                ),
                "unknown_destination",
                "unknown_destination",
            ),
        ]
        source, value, code, what = self.rnd.choice(builders)()
        return Item(-1, source, account, value, f"poison:{what}", code, None, n, None)

    def hostile(
        self, account: str, other: str, partition: int, anchor: datetime, start: datetime
    ) -> list[Item]:
        """Every kind of hostile record, on `partition` of both inputs; `start`: the layout's
        (every record reaches Kafka after it)."""
        out = []
        for source in ("usage", "account"):
            cases = self._hostile_cases(source, account, other, anchor, start)
            for what, key, value, code in cases:
                out.append(
                    Item(
                        -1,
                        source,
                        key,
                        value,
                        f"hostile:{what}",
                        code,
                        None,
                        self.next_id(),
                        None,
                        partition=partition,
                    )
                )
        return out

    def _hostile_cases(
        self, source: Source, account: str, other: str, anchor: datetime, start: datetime
    ) -> list[tuple[str, str | None, bytes, str]]:
        n = self.next_id()
        valid: dict[str, Any] = (
            {
                "event_id": f"{account}-h{n}",
                "account_id": account,
                "occurred_at": self.stamp(anchor),
                "destination": "+819012345678",
            }
            if source == "usage"
            else {
                "type": "credits_purchased",
                "event_id": f"{account}-h{n}",
                "account_id": account,
                "occurred_at": self.stamp(anchor),
                "purchase_id": f"ph-{n}",
                "amount": 1000,
                "payment_method": "credit_card",
            }
        )
        huge = {**valid, "event_id": "x" * HUGE_VALUE_BYTES}
        nul = account + "\x00"
        return [
            ("nul_key_not_json", nul, b"not json", "malformed_json"),
            ("nul_key", nul, _json(valid), "key_mismatch"),
            ("null_key", None, _json(valid), "key_mismatch"),
            ("empty_key", "", _json(valid), "key_mismatch"),
            ("another_accounts_key", other, _json(valid), "key_mismatch"),
            ("nul_in_account_id", account, _json({**valid, "account_id": nul}), "schema_violation"),
            (
                "far_future",
                account,
                _json({**valid, "occurred_at": "9999-10-02T23:30:00Z"}),
                "implausible_time",
            ),
            (
                "before_2000",
                account,
                _json({**valid, "occurred_at": "1999-12-31T23:59:59Z"}),
                "implausible_time",
            ),
            (
                # More than the allowed clock skew (1 day) after the record reached Kafka.
                "ahead_of_arrival",
                account,
                _json({**valid, "occurred_at": self.stamp(start + timedelta(days=3))}),
                "implausible_time",
            ),
            ("huge_value", account, _json(huge), "schema_violation"),
        ]

    def resend(self, original: Item, conflicting: bool) -> Item:
        """The same event again: byte for byte, re-serialised, or (conflict) altered."""
        assert original.value is not None
        payload = orjson.loads(original.value)
        if conflicting:
            if "segments" in payload or original.source == "usage":
                payload["segments"] = payload.get("segments", 1) % 4 + 1
            else:
                payload["amount"] = payload["amount"] + 1000
            return replace(
                original,
                seq=-1,
                value=_json(payload),
                label="conflict",
                token=self.next_id(),
                after_close=False,
            )
        if self.rnd.random() < 0.5:
            return replace(original, seq=-1, label="duplicate", after_close=False)
        # Re-serialised: other key order, the same instant in another offset.
        assert original.at is not None
        payload["occurred_at"] = self.stamp(original.at)
        reordered = dict(reversed(list(payload.items())))
        return replace(
            original, seq=-1, value=_json(reordered), label="duplicate", after_close=False
        )


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


# --- plans per kind of account ------------------------------------------------------------


def _normal(gen: _Gen, account: str, n: int, window: tuple[datetime, datetime]) -> list[Item]:
    """A prepay account: opened, buys, sets reminders, sends SMS; a few switch to postpay."""
    rnd = gen.rnd
    times = gen.times(max(n, 1), *window)
    credits = rnd.choice([None, None, None, 0, 100, 500, 1000])
    items = [gen.opened(account, times[0], credits)]
    switch_at = rnd.randrange(n // 3, n) if n > 3 and rnd.random() < 0.04 else -1
    invoice_at = rnd.randrange(1, n) if n > 2 and rnd.random() < 0.02 else -1
    for i, at in enumerate(times[1:], 1):
        r = rnd.random()
        if i == switch_at:
            items.append(gen.switch(account, at))
        elif i == invoice_at:
            items.append(gen.purchase(account, at, 1000 * rnd.randint(101, 300), "invoice"))
        elif r < 0.03:
            items.append(gen.purchase(account, at, 1000 * rnd.randint(1, 5)))
        elif r < 0.045:
            enabled = rnd.random() < 0.8
            items.append(
                gen.reminder(account, at, enabled, rnd.choice([100, 300, 500, 1000, 2000, 5000]))
            )
        elif r < 0.0475:
            items.append(gen.reject(account, at, opened=True))
        else:
            items.append(gen.usage(account, at))
    return items


def _implicit(gen: _Gen, account: str, n: int, window: tuple[datetime, datetime]) -> list[Item]:
    """Usage for an account nobody opened (overdraft); some are opened and buy later."""
    rnd = gen.rnd
    times = gen.times(max(n, 1), *window)
    open_at = rnd.randrange(n // 2, n) if n > 2 and rnd.random() < 0.4 else -1
    items = []
    for i, at in enumerate(times):
        if i == open_at:
            items.append(gen.opened(account, at, rnd.choice([None, 1000])))
        elif open_at != -1 and i > open_at and rnd.random() < 0.05:
            items.append(gen.purchase(account, at, 1000 * rnd.randint(1, 3)))
        else:
            items.append(gen.usage(account, at))
    return items


def _expiring(gen: _Gen, account: str, expires: datetime, validity: timedelta) -> list[Item]:
    """A whole life ~90 days ago: its two lots expire during the run with credit left."""
    rnd = gen.rnd
    t0 = expires - validity
    second = timedelta(seconds=1)
    items = [
        gen.opened(account, t0, rnd.choice([500, 1000, 2000])),
        gen.purchase(account, t0 + second, 1000 * rnd.randint(1, 3)),
    ]
    if rnd.random() < 0.7:
        threshold = rnd.choice([100, 600, 1500, 3000, 10_000])
        items.append(gen.reminder(account, t0 + 2 * second, True, threshold))
    # JP, one segment: at most JPY 40, so the first lot keeps credit until it is forfeited.
    for k in range(rnd.randint(1, 4)):
        items.append(gen.usage(account, t0 + (3 + k) * second, "+819012345678", 1))
    return items


def _postpay_history(
    gen: _Gen, account: str, n: int, window: tuple[datetime, datetime]
) -> list[Item]:
    """Prepay, then switched to postpay in one of the two ended months, with usage in both."""
    rnd = gen.rnd
    times = gen.times(max(n, 4), *window)
    items = [
        gen.opened(account, times[0], None),
        gen.purchase(account, times[1], 1000 * rnd.randint(1, 3)),
    ]
    switch_at = rnd.randrange(2, max(3, len(times) * 3 // 4))
    for i, at in enumerate(times[2:], 2):
        if i == switch_at:
            items.append(gen.switch(account, at))
        elif i == 2 and rnd.random() < 0.5:
            items.append(gen.reminder(account, at, True, rnd.choice([500, 1000, 3000])))
        else:
            # Corporate volume: the prepaid lots run out and the invoice has a total.
            items.append(gen.usage(account, at, segments=rnd.randint(1, 40)))
    return items


def _postpay_now(gen: _Gen, account: str, n: int, window: tuple[datetime, datetime]) -> list[Item]:
    """A postpay account in the current month: usage, now and then a purchase or a refusal."""
    rnd = gen.rnd
    items = []
    for at in gen.times(max(n, 1), *window):
        r = rnd.random()
        if r < 0.03:
            items.append(gen.purchase(account, at, 1000 * rnd.randint(1, 3)))
        elif r < 0.04:
            gen.rejects += 1
            items.append(gen.switch(account, at, label="reject:already_postpay"))
        else:
            items.append(gen.usage(account, at, segments=rnd.randint(1, 40)))
    return items


def _payments(
    gen: _Gen, account: str, invoice_id: str, total: int, window: tuple[datetime, datetime]
) -> list[Item]:
    """Bank transfers for a published invoice: part, maybe too much, maybe the rest."""
    rnd = gen.rnd
    plan: list[tuple[str, str, int]] = []
    half = total // 2
    if half > 0:
        plan.append(("payment", invoice_id, half))
    if rnd.random() < 0.3:
        plan.append(("reject:overpayment", invoice_id, total - half + 1))
    if rnd.random() < 0.6:
        plan.append(("payment", invoice_id, total - half))
    if rnd.random() < 0.15:
        plan.append(("reject:unknown_invoice", f"INV-2000-01-{account}", 1000))
    times = gen.times(len(plan), *window) if plan else []
    gen.rejects += sum(1 for label, _, _ in plan if label.startswith("reject:"))
    return [
        gen.pay(account, at, inv, amount, label)
        for at, (label, inv, amount) in zip(times, plan, strict=True)
    ]


def _order_key(item: Item) -> tuple[datetime, int, int]:
    assert item.at is not None
    # Ties as the worker breaks them: the account topic first.
    return (item.at, 0 if item.source == "account" else 1, item.token)


@dataclass
class _Kinds:
    expiry: list[str]
    postpay: list[str]
    late: list[str]
    implicit: list[str]
    normal: list[str]

    def categories(self) -> dict[str, str]:
        out = {}
        for kind in ("expiry", "postpay", "late", "implicit", "normal"):
            out.update(dict.fromkeys(getattr(self, kind), kind))
        return out


def _kinds(params: Params, rnd: random.Random) -> _Kinds:
    names = [f"c{params.seed}-{n:05d}" for n in range(params.accounts)]
    rnd.shuffle(names)
    a = params.accounts
    n_expiry, n_postpay = max(2, round(0.03 * a)), max(3, round(0.05 * a))
    n_late, n_implicit = max(1, round(0.3 * n_postpay)), max(1, round(0.03 * a))
    cut = [
        n_expiry,
        n_expiry + n_postpay - n_late,
        n_expiry + n_postpay,
        n_expiry + n_postpay + n_implicit,
    ]
    if cut[-1] >= a:
        raise ScenarioError(f"--accounts {a} is too few; use at least {cut[-1] + 1}")
    return _Kinds(
        names[: cut[0]],
        names[cut[0] : cut[1]],
        names[cut[1] : cut[2]],
        names[cut[2] : cut[3]],
        names[cut[3] :],
    )


def build(
    params: Params, start: datetime, policy: Policy, rates: RateTable, zone: ZoneInfo
) -> Scenario:
    """The whole scenario for `params.seed`, laid out against the wall clock `start`."""
    from chaos.model import expected_invoices  # the model replays phase 0

    layout = lay_out(start, zone)
    rnd = random.Random(params.seed)
    gen = _Gen(rnd, rates)
    kinds = _kinds(params, rnd)
    phase0, expiries = _phase0(gen, kinds, layout, params, policy)
    n_poison = math.ceil(params.events * params.poison_share)
    n_dups = round(params.events * params.duplicate_share)

    now_items = [
        i for a in kinds.postpay for i in _postpay_now(gen, a, rnd.randint(5, 30), layout.main)
    ]
    invoices = {
        a: total
        for a, total in expected_invoices(phase0, policy, layout.period).items()
        if total > 0
    }  # nothing to pay on a zero invoice
    budget = params.events - len(phase0) - len(now_items) - n_poison - n_dups
    budget -= 2 * len(invoices) + 4 * len(kinds.late)
    budget = math.ceil(budget * 1.01)  # the per-account counts round; never fall short
    weights = {
        a: rnd.uniform(0.3, 1.7) * (0.5 if a in kinds.implicit else 1.0)
        for a in kinds.normal + kinds.implicit
    }
    scale = max(budget, 0) / sum(weights.values())
    regular = now_items
    for account, weight in weights.items():
        plan = _implicit if account in kinds.implicit else _normal
        regular += plan(gen, account, max(3, round(weight * scale)), layout.main)
    regular.sort(key=_order_key)
    main = _after_close(gen, regular, invoices, kinds.late, layout)
    _add_noise(gen, main, phase0, kinds, n_dups, max(n_poison - gen.rejects, 1))
    _add_hostile(gen, main, kinds, layout.start)
    traffic = _expiry_traffic(gen, phase0, kinds, policy.lot_validity)
    numbered = [replace(item, seq=n) for n, item in enumerate(phase0 + main + traffic)]
    return Scenario(
        params,
        layout,
        numbered[: len(phase0)],
        numbered[len(phase0) : len(phase0) + len(main)],
        kinds.categories(),
        sorted(expiries),
        numbered[len(phase0) + len(main) :],
    )


def _phase0(
    gen: _Gen, kinds: _Kinds, layout: Layout, params: Params, policy: Policy
) -> tuple[list[Item], list[datetime]]:
    items: list[Item] = []
    expiries = []
    for account in kinds.expiry:
        delta = params.expiry_from_s + gen.rnd.uniform(0, params.expiry_spread_s)
        expires = layout.start + timedelta(seconds=delta)
        expiries += [expires, expires + timedelta(seconds=1)]
        items += _expiring(gen, account, expires, policy.lot_validity)
    for account in kinds.postpay + kinds.late:
        items += _postpay_history(gen, account, gen.rnd.randint(15, 45), layout.history)
    items.sort(key=_order_key)
    return items, expiries


def _after_close(
    gen: _Gen, regular: list[Item], invoices: dict[str, int], late: list[str], layout: Layout
) -> list[Item]:
    """Payments and late usage, placed after the gate (a little past the middle)."""
    rnd = gen.rnd
    gate_at = regular[len(regular) * 11 // 20].at
    assert gate_at is not None
    window = (gate_at, layout.main[1])
    late_set = set(late)
    payments = [
        p
        for account, total in sorted(invoices.items())
        if account not in late_set
        for p in _payments(gen, account, f"INV-{layout.period}-{account}", total, window)
    ]
    main = sorted(regular + payments, key=_order_key)
    gate = next((n for n, i in enumerate(main) if i.after_close), len(main) * 11 // 20)
    start, end = period_bounds(layout.period, layout.zone)
    for account in late:
        times = gen.times(rnd.randint(2, 5), start, end - timedelta(seconds=1))
        spots = sorted(rnd.randint(gate, len(main)) for _ in times)
        # Insert from the back so earlier spots stay valid; the times stay in order.
        for spot, at in sorted(zip(spots, times, strict=True), reverse=True):
            main.insert(spot, replace(gen.usage(account, at), label="late_usage", after_close=True))
    return main


def _add_hostile(gen: _Gen, main: list[Item], kinds: _Kinds, start: datetime) -> None:
    """Every kind of hostile record on every partition of both inputs, at random spots."""
    rnd = gen.rnd
    accounts = sorted(kinds.normal)
    # The time of a record amid the run (a poison record there has none).
    anchor = next(i.at for i in main[len(main) // 2 :] + main if i.at is not None)
    for partition in range(INPUT_PARTITIONS):
        account, other = rnd.sample(accounts, 2)
        for item in gen.hostile(account, other, partition, anchor, start):
            main.insert(rnd.randint(0, len(main)), item)


def _expiry_traffic(
    gen: _Gen, phase0: list[Item], kinds: _Kinds, validity: timedelta
) -> list[Item]:
    """Per expiring account, usage that occurred during the lots' life (right after the
    account's history, so that it heads its partition no later record of the run: every other
    record occurred after it) and reaches Kafka around their expiry: in time (every account),
    or after the forfeiture (every other account)."""
    first_expiry: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for item in phase0:
        if item.key in kinds.expiry and item.at is not None:
            last[item.key] = max(last.get(item.key, item.at), item.at)
            if item.label == "open":
                first_expiry[item.key] = item.at + validity
    out = []
    for n, account in enumerate(kinds.expiry):
        expires = first_expiry[account]
        timed = gen.usage(account, last[account] + timedelta(seconds=10), "+819012345678", 1)
        out.append(replace(timed, label="in_time_usage", expires=expires))
        if n % 2 == 0:
            late = gen.usage(account, last[account] + timedelta(seconds=11), "+819012345678", 1)
            out.append(replace(late, label="too_late_usage", expires=expires))
    return out


def _add_noise(
    gen: _Gen, main: list[Item], phase0: list[Item], kinds: _Kinds, n_dups: int, n_poison: int
) -> None:
    """Re-sends (plain and conflicting) after their original, and undecodable records."""
    rnd = gen.rnd
    quiet = set(kinds.expiry) | set(kinds.late)
    candidates = [(-1, i) for i in phase0 if i.label == "usage" and i.key not in quiet]
    candidates += [
        (n, i)
        for n, i in enumerate(main)
        if i.label in ("usage", "purchase") and not i.after_close and i.key not in quiet
    ]
    n_conflicts = n_poison // 5
    picks = rnd.sample(candidates, min(len(candidates), n_dups + n_conflicts))
    inserts = [
        (rnd.randint(n + 1, len(main)), gen.resend(i, k < n_conflicts))
        for k, (n, i) in enumerate(picks)
    ]
    accounts = sorted(kinds.categories())
    anchor = main[len(main) // 2].at
    assert anchor is not None
    inserts += [
        (rnd.randint(0, len(main)), gen.poison(rnd.choice(accounts), anchor))
        for _ in range(n_poison - n_conflicts)
    ]
    for spot, item in sorted(inserts, key=lambda s: s[0], reverse=True):
        main.insert(spot, item)
