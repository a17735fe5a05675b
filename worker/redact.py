"""Secrets never leave the process: outputs are scrubbed of them, DSNs shown masked."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"
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
    """The DSN with its password, if any, replaced by a mask."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{parts.username or ''}:{MASK}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))
