"""Why inputs are unusable, and the digest's view of an outbox payload."""

from __future__ import annotations

import orjson

from worker.adapters.digest import newest_snapshots, payload_digest_form
from worker.service.inputs import input_problem, timestamp_problem


def test_inputs_partitioned_alike_are_usable() -> None:
    assert input_problem({"usage": 6, "account": 6}) is None


def test_a_missing_input_topic_is_named() -> None:
    assert input_problem({"usage": 6, "account": None}) == "input topic missing: account"


def test_different_partition_counts_name_both_topics_and_counts() -> None:
    problem = input_problem({"usage": 8, "account": 6})
    assert problem is not None
    assert "account has 6, usage has 8" in problem


def test_inputs_stamped_on_arrival_or_not_described_are_no_timestamp_problem() -> None:
    assert timestamp_problem({"usage": "LogAppendTime", "account": "LogAppendTime"}) is None
    assert timestamp_problem({"usage": "LogAppendTime", "account": None}) is None


def test_a_producer_stamped_input_is_named_with_the_fix_and_the_setting() -> None:
    problem = timestamp_problem({"usage": "CreateTime", "account": "LogAppendTime"})

    assert problem is not None
    assert problem.startswith("input topic usage has message.timestamp.type=CreateTime")
    assert "--entity-name usage --add-config message.timestamp.type=LogAppendTime" in problem
    assert "BILLING_ALLOW_CREATE_TIME_INPUTS=true" in problem
    assert "account" not in problem


def test_the_digest_ignores_wall_clock_fields_and_topic_names_only() -> None:
    roles = {"run-1.usage": "usage", "run-2.usage": "usage"}
    first = {"source_topic": "run-1.usage", "failed_at": "2026-01-01T00:00:00Z", "reason": "x"}
    second = {**first, "source_topic": "run-2.usage", "failed_at": "2026-02-02T00:00:00Z"}
    other = {**first, "reason": "y"}

    def form(body: dict[str, str]) -> bytes:
        return payload_digest_form(orjson.dumps(body), roles)

    assert form(first) == form(second)
    assert form(first) != form(other)


def test_the_digest_keeps_the_newest_balance_snapshot_per_account_whatever_the_batches() -> None:
    def snap(account: str, version: int) -> tuple[str, str, bytes]:
        body = {"account_id": account, "version": version}
        return (f"{account}:balance:{version}", account, orjson.dumps(body))

    one_batch_each = [snap("a", 1), snap("a", 2), snap("a", 3), snap("b", 1)]
    all_in_one = [snap("b", 1), snap("a", 3)]
    assert newest_snapshots(one_batch_each) == {"a:balance:3", "b:balance:1"}
    assert newest_snapshots(all_in_one) == newest_snapshots(one_batch_each)
