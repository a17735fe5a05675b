"""The demo's simulated traffic is what it claims: valid events decode, bad ones do not."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from worker.adapters.rates import load_rate_table
from worker.adapters.wire import Decoder
from worker.domain.account import Account, Policy
from worker.domain.errors import Rejected
from worker.domain.events import Effects
from worker.entrypoints.traffic import Traffic
from worker.service.ports import Dead, Decoded, InputRecord


def test_only_the_events_meant_to_be_malformed_are_refused() -> None:
    decoder = Decoder(load_rate_table(None))
    traffic = Traffic("t1", 12, random.Random(3), malformed_share=0.05)
    now = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
    sent_ms = int(now.timestamp() * 1000)  # the records reach Kafka when they are made
    events = traffic.opening(now) + [traffic.next(now) for _ in range(5000)]
    accounts = {a: Account(a) for a in traffic.account_ids}
    wrong = []
    countries: Counter[str] = Counter()
    for offset, event in enumerate(events):
        record = InputRecord(
            event.source, "t", 0, offset, event.account_id.encode(), event.value, sent_ms
        )
        decoded = decoder(record)
        refused = isinstance(decoded, Dead)
        if isinstance(decoded, Decoded):
            if event.kind == "sms":
                countries[decoded.command.rated.country] += 1  # type: ignore[union-attr]
            try:
                accounts[event.account_id].apply(decoded.command, Policy(), Effects())
            except Rejected:
                refused = True
        if refused != event.malformed:
            wrong.append(event)
    assert wrong == []
    assert {"JP", "US", "GB", "KR", "SG", "PH"} <= set(countries)
    assert countries["JP"] > sum(countries.values()) / 2
    kinds = Counter(e.kind for e in events)
    assert kinds["switched_to_postpay"] >= 2
    assert kinds["credits_purchased"] > 0
    assert kinds["reminder_configured"] > 0
    assert 0 < sum(e.malformed for e in events) < len(events) / 10
