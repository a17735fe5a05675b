"""The chaos run's database probe, asked by several of its tasks at once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from chaos import runner
from chaos.runner import Probe


class OneAtATime:
    """Stands for an asyncpg connection: one operation at a time, as the real one, which
    raises InternalClientError when a second starts while the first is under way."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.asked: list[str] = []

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass

    async def fetchval(self, sql: str, *args: Any, **options: Any) -> Any:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            if self.active > 1:
                raise asyncpg.InternalClientError(
                    "cannot switch to state 13; another operation (1) is in progress"
                )
            await asyncio.sleep(0)  # the round trip: other tasks run meanwhile
            self.asked.append(sql)
            return f"answer to {sql}"
        finally:
            self.active -= 1


async def test_concurrent_questions_share_one_connection_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = OneAtATime()
    opened: list[str] = []

    async def connect(url: str, **options: Any) -> OneAtATime:
        await asyncio.sleep(0)  # connecting takes a round trip too
        opened.append(url)
        return conn

    monkeypatch.setattr(runner.asyncpg, "connect", connect)
    probe = Probe("postgresql://probe@db/run")
    questions = [f"SELECT {n}" for n in range(6)]

    answers = await asyncio.gather(*(probe.value(q) for q in questions))

    assert answers == [f"answer to {q}" for q in questions]
    assert conn.most == 1
    assert sorted(conn.asked) == questions
    assert opened == ["postgresql://probe@db/run"]  # one connection, not one per racing task
