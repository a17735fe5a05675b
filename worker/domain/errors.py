"""Reasons the domain refuses an event; each ends in the dead-letter topic."""

from __future__ import annotations


class Rejected(Exception):
    """An event that breaks a business rule; it is dead-lettered, nothing is applied."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
