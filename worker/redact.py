"""Secrets never leave the process: outputs are scrubbed of them, DSNs shown masked."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)
_secrets: set[str] = set()


def register(*secrets: str) -> None:
    """Remember values that must never be printed (passwords of the settings)."""
    _secrets.update(s for s in secrets if s)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by a mask."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_dsn(dsn: str) -> str:
    """The DSN with its password (in the user part or a `password=` parameter) masked."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hostinfo}"
        query = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", parts.query)
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        # Unparseable: show nothing of it rather than risk showing a secret.
        return "<unparseable DSN>"
