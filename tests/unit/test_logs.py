"""Log lines are JSON with the record's position, and never carry an e-mail address."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest
import structlog

from worker import logs


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logs configured as `billing-worker` does, into a buffer; the defaults restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    logs.configure("INFO", json=True)
    yield buffer
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_email_addresses_are_redacted_wherever_they_sit(stderr: io.StringIO) -> None:
    logs.get("worker.test").warning(
        "dead_lettered",
        topic="sms.usage.v1",
        partition=2,
        offset=41,
        account="acc-1",
        reason="reminder for ops@example.jp failed",
        context={"to": ["billing+acc-1@example.com"], "n": 1},
    )
    [line] = lines(stderr)
    assert line["event"] == "dead_lettered"
    assert (line["topic"], line["partition"], line["offset"], line["account"]) == (
        "sms.usage.v1",
        2,
        41,
        "acc-1",
    )
    assert line["reason"] == "reminder for <email> failed"
    assert line["context"] == {"to": ["<email>"], "n": 1}
    assert "@" not in orjson.dumps(line).decode()


def test_library_logs_come_out_as_redacted_json_too(stderr: io.StringIO) -> None:
    logging.getLogger("aiokafka.consumer").warning("could not reach %s", "root@broker.example")
    [line] = lines(stderr)
    assert line["logger_name"] == "aiokafka.consumer"
    assert line["event"] == "could not reach <email>"


def test_the_level_comes_from_the_settings(
    stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure("WARNING", json=True)
    log = logs.get("worker.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in lines(stderr)] == ["shown"]


def test_a_traced_logger_writes_its_debug_lines_at_info_and_no_other_does(
    stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure("INFO", json=True, debug=frozenset({"worker.stream"}))
    logs.get("worker.stream").debug("offsets_committed", offsets={"u:5": 1990}, batch=3)
    logs.get("worker.relay").debug("relay_round", rows=2)
    logs.get("worker.relay").info("relay_recovered", highest_seq=1)
    logging.getLogger("aiokafka").debug("fetching")

    assert [(line["event"], line["level"]) for line in lines(stderr)] == [
        ("offsets_committed", "debug"),
        ("relay_recovered", "info"),
    ]


def test_the_stream_is_told_whether_its_debug_lines_are_written(stderr: io.StringIO) -> None:
    logs.configure("INFO", json=True)
    assert not logs.traces("worker.stream")
    logs.configure("INFO", json=True, debug=frozenset({"worker.stream"}))
    assert logs.traces("worker.stream")
    assert not logs.traces("worker.relay")
    logs.configure("DEBUG", json=True)
    assert logs.traces("worker.relay")
    structlog.reset_defaults()  # unconfigured, structlog writes every level
    assert logs.traces("worker.relay")
