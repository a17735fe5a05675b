"""Regression: on a freshly started broker the first `billing-worker lag` exited 3 with
GroupCoordinatorNotAvailableError (the offsets topic is created on first use), and plain
`lag` printed `committed=None`."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError
from typer.testing import CliRunner

from worker import logs
from worker.adapters import kafka_admin
from worker.adapters.kafka_admin import OffsetReader, Offsets
from worker.entrypoints.cli import app

USAGE, EVENTS = "sms.usage.v1", "billing.account-events.v1"


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI points logging at the runner's stdout, which is closed after `invoke`: later
    tests in the session would log into a closed file."""
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)


def test_first_lag_on_a_fresh_broker_retries_the_coordinator_error_and_prints_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a fresh broker answers the first group request with
    COORDINATOR_NOT_AVAILABLE; `lag` exited 3 and printed `committed=None` before."""
    calls = 0

    async def committed_and_end(self: OffsetReader, group: str, topics: list[str]) -> Offsets:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise GroupCoordinatorNotAvailableError("offsets topic being created")
        return {TopicPartition(USAGE, 0): (None, 2), TopicPartition(EVENTS, 0): (1, 1)}

    async def head_timestamps(
        self: OffsetReader, heads: object, ends: object
    ) -> dict[TopicPartition, int]:
        return {}

    monkeypatch.setattr(OffsetReader, "committed_and_end", committed_and_end)
    monkeypatch.setattr(OffsetReader, "head_timestamps", head_timestamps)
    monkeypatch.setenv("BILLING_CONSUMER_GROUP", "billing")

    result = CliRunner().invoke(app, ["lag"])
    assert result.exit_code == 0, result.output
    assert calls == 2
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
    ]
    assert lines[1].split() == ["billing", EVENTS, "0", "1", "1", "0", "0.0"]
    assert lines[2].split() == ["billing", USAGE, "0", "-", "2", "2", "-"]
    assert "None" not in result.stdout

    result = CliRunner().invoke(app, ["lag", "--json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)["partitions"]
    assert [(r["committed"], r["lag"], r["lag_seconds"]) for r in rows] == [
        (1, 0, 0.0),
        (None, 2, None),
    ]


def test_lag_exits_3_when_the_broker_stays_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def committed_and_end(self: OffsetReader, group: str, topics: list[str]) -> Offsets:
        raise GroupCoordinatorNotAvailableError("still no coordinator")

    monkeypatch.setattr(OffsetReader, "committed_and_end", committed_and_end)
    monkeypatch.setattr(kafka_admin, "LAG_RETRY_S", 0.5)
    monkeypatch.setenv("BILLING_CONNECT_TIMEOUT_S", "1")  # the CLI's own bound on reaching Kafka
    result = CliRunner().invoke(app, ["lag"])
    assert result.exit_code == 3
    # the shared failure report (errors) words the message; exit 3 is the contract
