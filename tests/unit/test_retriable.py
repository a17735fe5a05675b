"""Which failures wait for the infrastructure and which isolate a record."""

from __future__ import annotations

import asyncpg

from worker.errors import is_retriable


def test_a_read_only_server_during_a_failover_is_waited_for_not_dead_lettered() -> None:
    assert is_retriable(asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"))


def test_a_constraint_violation_is_not_retried() -> None:
    assert not is_retriable(asyncpg.exceptions.CheckViolationError("balance"))
