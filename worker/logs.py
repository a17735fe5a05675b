"""Structured JSON logs, one line per event of interest."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from worker import redact

# A URL's user part (`postgresql://user:password@host`) is kept, its password masked, so that a
# log line can name the database it could not reach; anything else around an @ is an address.
_URL_USER_OR_EMAIL = re.compile(
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://[^@\s\"'/]*@)|[^@\s\"']+@[^@\s\"']+"
)


def _url_user_or_email(match: re.Match[str]) -> str:
    url = match.group("url")
    if url is None:
        return "<email>"
    scheme, _, userinfo = url[:-1].partition("://")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        value = redact.scrub(value)
        return _URL_USER_OR_EMAIL.sub(_url_user_or_email, value) if "@" in value else value
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact(v) for v in value]
    return value


def _redact_emails(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """E-mail addresses and secrets never reach a log line, however deep in the event."""
    for key, value in event.items():
        event[key] = _redact(value)
    return event


def _stdlib_logger_name(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if record is not None:
        event["logger_name"] = record.name
    return event


class _OncePerWindow(logging.Filter):
    """A library line repeated on every reconnect attempt (aiokafka's `Unable connect to …`)
    passes once per `window_s`: an outage reads as one line, not one per attempt."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self.last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        last = self.last.get(key)
        if last is not None and record.created - last < self.window_s:
            return False
        if len(self.last) > 1000:
            self.last.clear()
        self.last[key] = record.created
        return True


def _below_level_unless_traced(level: str, traced: frozenset[str]) -> Any:
    """Drops an event below `level` unless its logger is one of `traced`."""
    floor = logging.getLevelName(level)

    def processor(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("logger_name") in traced:
            return event
        if logging.getLevelName(method.upper()) < floor:
            raise structlog.DropEvent
        return event

    return processor


# What configure() last chose: DEBUG lines from every logger, or only from these.
_debug_everywhere = False
_traced: frozenset[str] = frozenset()


def traces(name: str) -> bool:
    """Whether logger `name` writes DEBUG lines, so that a caller on the hot path builds a
    costly field only for a line that is written (unconfigured, structlog writes them all)."""
    return not structlog.is_configured() or _debug_everywhere or name in _traced


def configure(
    level: str = "INFO",
    json: bool = True,
    *,
    quiet_libraries: bool = False,
    debug: frozenset[str] = frozenset(),
) -> None:
    """Route stdlib and structlog output through one JSON renderer on stderr.

    `quiet_libraries` (one-shot commands): library loggers only at DEBUG, because the command
    reports its own failure in one line that names the target. `debug`: the worker's own
    loggers (e.g. `worker.stream`, every offset commit) that write DEBUG lines at any level,
    without turning on the libraries' DEBUG output.
    """
    global _debug_everywhere, _traced
    _debug_everywhere, _traced = level == "DEBUG", debug
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_emails,
    ]
    gate: list[Any] = [_below_level_unless_traced(level, debug)] if debug else []
    structlog.configure(
        processors=[*gate, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.getLevelName(level)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (aiokafka, asyncpg, aiohttp) get the same JSON lines; INFO from them is
    # noise, so they stay at WARNING unless the worker itself is at DEBUG.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_stdlib_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    if level != "DEBUG":
        handler.addFilter(_OncePerWindow())
    root = logging.getLogger()
    root.handlers = [handler]
    if level == "DEBUG":
        root.setLevel(logging.DEBUG)
    else:
        root.setLevel(logging.CRITICAL if quiet_libraries else logging.WARNING)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def preferences_from_env(environ: Mapping[str, str]) -> tuple[str, bool]:
    """(level, json) from BILLING_LOG_LEVEL/BILLING_LOG_JSON, leniently: for reporting that the
    settings themselves are bad, in the format the operator asked for where it can be told."""
    level = environ.get("BILLING_LOG_LEVEL", "INFO").strip().upper()
    json = environ.get("BILLING_LOG_JSON", "true").strip().lower() not in _FALSE
    return (level if level in _LEVELS else "INFO"), json


_FALSE = ("0", "false", "f", "no", "n", "off")


def get(name: str) -> Any:
    return structlog.get_logger(logger_name=name)
