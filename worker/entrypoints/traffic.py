"""Simulated traffic for `billing-worker demo`: plausible account and SMS events, a few bad ones.

Pure apart from the random generator it is given, so a seed replays the same traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

Source = Literal["usage", "account"]

# (destination prefix, digits to append): every one is a valid number in a country with a rate.
DESTINATIONS: tuple[tuple[str, int], ...] = (
    ("+8190", 8),
    ("+8180", 8),
    ("+8170", 8),  # Japan, most of the traffic
    ("+1212555", 4),
    ("+1415555", 4),  # United States
    ("+447400", 6),  # United Kingdom
    ("+8210", 8),  # South Korea
    ("+6581", 6),  # Singapore
    ("+63917", 7),  # Philippines
)
JAPAN_SHARE = 0.6
CARD_AMOUNTS_JPY = (1_000, 3_000, 5_000, 10_000, 30_000)
INVOICE_AMOUNTS_JPY = (120_000, 150_000, 200_000, 500_000)  # paid by invoice: over 100,000
THRESHOLDS_JPY = (50, 100, 500, 1_000)


@dataclass(frozen=True)
class Event:
    """One record to produce, and whether the worker is expected to dead-letter it."""

    source: Source
    account_id: str
    value: bytes
    kind: str
    malformed: bool = False


@dataclass
class Traffic:
    """A small population of demo accounts and the events they generate."""

    run_id: str
    accounts: int
    rng: random.Random
    malformed_share: float = 0.02
    postpay_every: int = 6
    seq: int = 0
    account_ids: list[str] = field(default_factory=list)
    postpay_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.account_ids = [f"demo-{self.run_id}-{i:03d}" for i in range(1, self.accounts + 1)]
        self.postpay_ids = {
            a
            for i, a in enumerate(self.account_ids)
            if i % self.postpay_every == self.postpay_every - 1
        }

    def opening(self, now: datetime) -> list[Event]:
        """Open every account with test credits; reminders, purchases, a few go postpay."""
        events = []
        for i, account in enumerate(self.account_ids):
            events.append(self._account(account, "account_opened", now, test_credits=100))
            if i % 2 == 0:
                events.append(self._reminder(account, now))
            if account in self.postpay_ids:
                events.append(
                    self._account(
                        account, "switched_to_postpay", now, contract_id=f"contract-{account}"
                    )
                )
            else:
                events.append(self._purchase(account, now, "credit_card"))
        return events

    def next(self, now: datetime) -> Event:
        """One event of the steady stream: mostly SMS, sometimes a purchase or a setting."""
        account = self.rng.choice(self.account_ids)
        roll = self.rng.random()
        if roll < self.malformed_share:
            return self.malformed(account, now)
        roll = self.rng.random()
        if roll < 0.01:
            return self._reminder(account, now)
        if account in self.postpay_ids:  # billed monthly: they do not buy credits
            return self.usage(account, now)
        if roll < 0.03:
            return self._purchase(account, now, "credit_card")
        if roll < 0.035:
            return self._purchase(account, now, "invoice")
        return self.usage(account, now)

    def usage(self, account: str, now: datetime) -> Event:
        if self.rng.random() < JAPAN_SHARE:
            prefix, digits = DESTINATIONS[self.rng.randrange(3)]
        else:
            prefix, digits = self.rng.choice(DESTINATIONS[3:])
        number = prefix + "".join(str(self.rng.randrange(10)) for _ in range(digits))
        segments = self.rng.choices((1, 2, 3, 4, 8), weights=(80, 10, 5, 4, 1))[0]
        return self._event(
            "usage",
            account,
            "sms",
            {
                "event_id": self._id(),
                "account_id": account,
                "occurred_at": _stamp(now),
                "destination": number,
                "segments": segments,
                "message_id": f"msg-{self.seq}",
            },
        )

    def malformed(self, account: str, now: datetime) -> Event:
        """Broken in one of the ways real producers break things."""
        case = self.rng.randrange(6)
        if case == 0:
            return Event("usage", account, b'{"event_id": "truncated', "bad_json", True)
        if case == 1:
            return self._bad(
                "usage",
                account,
                {
                    "event_id": self._id(),
                    "account_id": account,
                    "occurred_at": _stamp(now),
                    "destination": "0312345678",
                    "segments": 1,
                },
            )  # not E.164
        if case == 2:
            return self._bad(
                "usage",
                account,
                {
                    "event_id": self._id(),
                    "account_id": account,
                    "occurred_at": _stamp(now),
                    "destination": "+33612345678",
                    "segments": 1,
                },
            )  # France: no rate
        if case == 3:
            return self._bad(
                "account",
                account,
                {
                    "type": "account_closed",
                    "event_id": self._id(),
                    "account_id": account,
                    "occurred_at": _stamp(now),
                },
            )  # unknown type
        if case == 4:
            return self._bad(
                "account",
                account,
                {
                    "type": "credits_purchased",
                    "event_id": self._id(),
                    "account_id": account,
                    "occurred_at": _stamp(now),
                    "purchase_id": f"p-{self.seq}",
                    "amount": 1_500,
                    "payment_method": "credit_card",
                },
            )  # not a multiple of 1,000
        return self._bad(
            "account",
            account,
            {
                "type": "credits_purchased",
                "event_id": self._id(),
                "account_id": account,
                "occurred_at": _stamp(now),
                "purchase_id": f"p-{self.seq}",
                "amount": 50_000,
                "payment_method": "invoice",
            },
        )  # by invoice only over 100,000

    def _purchase(self, account: str, now: datetime, method: str) -> Event:
        amounts = CARD_AMOUNTS_JPY if method == "credit_card" else INVOICE_AMOUNTS_JPY
        return self._account(
            account,
            "credits_purchased",
            now,
            purchase_id=f"purchase-{self.run_id}-{self.seq + 1}",
            amount=self.rng.choice(amounts),
            payment_method=method,
        )

    def _reminder(self, account: str, now: datetime) -> Event:
        return self._account(
            account,
            "reminder_configured",
            now,
            enabled=True,
            threshold=self.rng.choice(THRESHOLDS_JPY),
            email=f"billing+{account}@example.com",
        )

    def _account(self, account: str, kind: str, now: datetime, **fields: Any) -> Event:
        return self._event(
            "account",
            account,
            kind,
            {
                "type": kind,
                "event_id": self._id(),
                "account_id": account,
                "occurred_at": _stamp(now),
                **fields,
            },
        )

    def _event(self, source: Source, account: str, kind: str, body: dict[str, Any]) -> Event:
        return Event(source, account, orjson.dumps(body), kind)

    def _bad(self, source: Source, account: str, body: dict[str, Any]) -> Event:
        return Event(source, account, orjson.dumps(body), "malformed", True)

    def _id(self) -> str:
        self.seq += 1
        return f"demo-{self.run_id}-{self.seq}"


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")
