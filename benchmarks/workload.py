"""Deterministic benchmark traffic: accounts with lots and a threshold, then a usage mix.

The same seed yields the same records byte for byte. Besides the records, a `Workload` knows
what the worker must make of them (applied, duplicates, dead letters), so every run is checked
against the database before its figures are believed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import orjson

JST = timezone(timedelta(hours=9))
JAPAN = ("+8190", "+8180", "+8170")
# (prefix, digits to append, country): every one a number of a country in worker/rates.json.
ABROAD = (
    ("+1212555", 4, "US"),
    ("+447400", 6, "GB"),
    ("+8210", 8, "KR"),
    ("+6581", 6, "SG"),
    ("+63917", 7, "PH"),
)
NO_RATE = ("+336", 8)  # France: not in the rate table, so a dead letter
PRICES = {"JP": 10, "US": 12, "GB": 14, "KR": 12, "SG": 11, "PH": 15}
# Segments per message: 80 % one, 12 % two, 5 % three, 2 % four, 1 % eight.
SEGMENT_TABLE = (1,) * 80 + (2,) * 12 + (3,) * 5 + (4,) * 2 + (8,)
CARD_AMOUNTS_JPY = (1_000, 3_000, 5_000, 10_000)
THRESHOLDS_JPY = (500, 1_000, 2_000)

Record = tuple[bytes, bytes]
"""(key, value) of one Kafka record."""

Row = tuple[str, str, datetime, int]
"""(event_id, account_id, occurred_at, amount_jpy): the least a durable write keeps."""


@dataclass(frozen=True)
class Mix:
    """Shares of the usage stream."""

    japan_share: float = 0.85
    country_field_share: float = 0.8  # the platform usually names the country
    duplicate_share: float = 0.02  # redelivered by the platform, byte for byte
    dead_share: float = 0.001  # half invalid JSON, half a destination without a rate
    postpay_share: float = 0.02
    hot_share: float = 0.0  # of usage sent by one account (the first), on top of the skew


@dataclass
class Workload:
    """Records for the two input topics and what the worker must make of them."""

    account: list[Record] = field(default_factory=list)
    usage: list[Record] = field(default_factory=list)
    usage_ids: list[str] = field(default_factory=list)  # per usage record; "" when dead
    rows: list[Row] = field(default_factory=list)  # one per event that must be applied
    applied_account: int = 0
    applied_usage: int = 0
    duplicates: int = 0
    dead: int = 0

    @property
    def total(self) -> int:
        return len(self.account) + len(self.usage)


class Generator:
    """Builds workloads from one seeded random generator."""

    def __init__(self, seed: int, run_id: str, start: datetime, mix: Mix | None = None) -> None:
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.start = start
        self.mix = mix or Mix()
        self.seq = 0

    def _id(self, kind: str) -> str:
        self.seq += 1
        return f"{self.run_id}-{kind}{self.seq}"

    def open_accounts(
        self,
        work: Workload,
        ids: list[str],
        *,
        purchases: tuple[int, int],
        test_credits: list[int] | None = None,
        threshold_jpy: int | None = None,
        reminder_share: float = 1.0,
        span_s: float = 60.0,
    ) -> None:
        """Open each account, set its reminder, buy a few lots; some switch to postpay."""
        rng = self.rng
        step = span_s / max(len(ids), 1)
        for i, account in enumerate(ids):
            at = self.start + timedelta(seconds=i * step)
            events: list[dict[str, object]] = [{"type": "account_opened"}]
            if test_credits is not None:
                events[0]["test_credits"] = test_credits[i]
            if rng.random() < reminder_share:
                threshold = threshold_jpy or rng.choice(THRESHOLDS_JPY)
                events.append(
                    {
                        "type": "reminder_configured",
                        "enabled": True,
                        "threshold": threshold,
                        "email": f"ops+{account}@example.com",
                    }
                )
            for _ in range(rng.randint(*purchases)):
                if rng.random() < 0.005:
                    events.append(
                        {
                            "type": "credits_purchased",
                            "purchase_id": self._id("p"),
                            "amount": 120_000,
                            "payment_method": "invoice",
                        }
                    )
                else:
                    events.append(
                        {
                            "type": "credits_purchased",
                            "purchase_id": self._id("p"),
                            "amount": rng.choice(CARD_AMOUNTS_JPY),
                            "payment_method": "credit_card",
                        }
                    )
            if rng.random() < self.mix.postpay_share:
                events.append({"type": "switched_to_postpay", "contract_id": f"c-{account}"})
            key = account.encode()
            for n, body in enumerate(events):
                occurred = at + timedelta(milliseconds=n)
                event_id = self._id("a")
                body.update(
                    event_id=event_id,
                    account_id=account,
                    occurred_at=occurred.astimezone(JST).isoformat(timespec="milliseconds"),
                )
                work.account.append((key, orjson.dumps(body)))
                amount = body.get("amount")
                work.rows.append(
                    (event_id, account, occurred, amount if isinstance(amount, int) else 0)
                )
                work.applied_account += 1

    def usage(
        self,
        work: Workload,
        ids: list[str],
        count: int,
        *,
        begin: datetime,
        span_s: float,
        skewed: bool,
    ) -> None:
        """`count` usage records from `begin` over `span_s`: the mix in `Mix`.

        Skewed traffic comes mostly from a few big senders (account index ~ u²)."""
        mix, random_ = self.mix, self.rng.random
        keys = [a.encode() for a in ids]
        step = span_s / max(count, 1)
        origin = begin.timestamp()
        stamps = _Stamps()
        recent: list[int] = []
        for i in range(count):
            roll = random_()
            if roll < mix.duplicate_share and recent:
                j = recent[int(random_() * len(recent))]
                work.usage.append(work.usage[j])
                work.usage_ids.append(work.usage_ids[j])
                work.duplicates += 1
                continue
            u = random_()
            index = int(len(ids) * (u * u if skewed else u))
            # Drawn only when asked for, so that the default mix stays byte for byte the same.
            if mix.hot_share and random_() < mix.hot_share:
                index = 0
            account, key = ids[index], keys[index]
            at_s = origin + i * step - random_() * 0.5
            stamp = stamps.format(at_s)
            self.seq += 1
            event_id = f"{self.run_id}-u{self.seq}"
            if roll < mix.duplicate_share + mix.dead_share:
                work.usage.append((key, self._dead(event_id, account, stamp)))
                work.usage_ids.append("")
                work.dead += 1
                continue
            body: dict[str, object] = {
                "event_id": event_id,
                "account_id": account,
                "occurred_at": stamp,
            }
            segments = SEGMENT_TABLE[int(random_() * len(SEGMENT_TABLE))]
            if random_() < mix.japan_share:
                country, price = "JP", 10
                body["destination"] = f"{JAPAN[int(random_() * 3)]}{int(random_() * 1e8):08d}"
            else:
                prefix, digits, country = ABROAD[int(random_() * len(ABROAD))]
                price = PRICES[country]
                body["destination"] = prefix + str(int(random_() * 10**digits)).zfill(digits)
            if random_() < mix.country_field_share:
                body["country"] = country
            body["segments"] = segments
            body["message_id"] = f"m{self.seq}"
            recent.append(len(work.usage))
            if len(recent) > 5_000:
                recent = recent[-2_500:]
            work.usage.append((key, orjson.dumps(body)))
            work.usage_ids.append(event_id)
            work.rows.append(
                (event_id, account, datetime.fromtimestamp(at_s, UTC), price * segments)
            )
            work.applied_usage += 1

    def _dead(self, event_id: str, account: str, stamp: str) -> bytes:
        if self.rng.random() < 0.5:
            return b'{"event_id": "' + event_id.encode() + b'", "account_id": '
        prefix, digits = NO_RATE
        return orjson.dumps(
            {
                "event_id": event_id,
                "account_id": account,
                "occurred_at": stamp,
                "destination": prefix + str(self.rng.randrange(10**digits)).zfill(digits),
            }
        )


class _Stamps:
    """RFC 3339 in Japan time with milliseconds; the date and time part cached per second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, at_s: float) -> str:
        second = int(at_s // 1)
        if second != self.second:
            self.second = second
            self.prefix = datetime.fromtimestamp(second, JST).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self.prefix}.{int((at_s - second) * 1000):03d}+09:00"


def account_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


def main_workload(gen: Generator, accounts: int, events: int) -> Workload:
    """Accounts with a few lots and a threshold each, then `events` usage records (one
    account sends `gen.mix.hot_share` of them on top of the skew)."""
    work = Workload()
    ids = account_ids(f"{gen.run_id}-acct", accounts)
    gen.open_accounts(work, ids, purchases=(1, 3), span_s=60.0)
    gen.usage(
        work, ids, events, begin=gen.start + timedelta(seconds=120), span_s=3_600.0, skewed=True
    )
    return work


def skewed_share(index: int, accounts: int) -> float:
    """The share of skewed usage that goes to account `index` (index = ⌊accounts · u²⌋)."""
    return math.sqrt((index + 1) / accounts) - math.sqrt(index / accounts)


def latency_setup(
    gen: Generator, accounts: int, events: int, tag: str = ""
) -> tuple[Workload, list[str]]:
    """Accounts whose balance sits a random number of charges above a 100 JPY threshold (up
    to twice the charges each should get from `events` skewed usage events), so low-balance
    and depleted reminders keep coming while usage flows. `tag` keeps load levels apart."""
    work = Workload()
    ids = account_ids(f"{gen.run_id}-lat{tag}", accounts)
    credits = []
    for index in range(accounts):
        reach = max(int(2 * events * skewed_share(index, accounts)), 2)
        credits.append(100 + 10 * gen.rng.randint(1, reach))
    gen.open_accounts(
        work, ids, purchases=(0, 0), test_credits=credits, threshold_jpy=100, span_s=30.0
    )
    return work, ids


def rss_workload(gen: Generator, accounts: int) -> Workload:
    """Many accounts, each opened with a lot or two and charged twice."""
    work = Workload()
    ids = account_ids(f"{gen.run_id}-rss", accounts)
    gen.open_accounts(work, ids, purchases=(0, 1), reminder_share=0.5, span_s=60.0)
    gen.usage(
        work,
        ids,
        2 * accounts,
        begin=gen.start + timedelta(seconds=120),
        span_s=600.0,
        skewed=False,
    )
    return work
