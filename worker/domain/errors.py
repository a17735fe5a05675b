"""The one root of the worker's errors, and the reasons the domain refuses an event."""

from __future__ import annotations


class BillingError(Exception):
    """Root of every error the worker raises itself; `retriable` says whether a retry may help."""

    retriable = False


class Rejected(BillingError):
    """An event that breaks a business rule; it is dead-lettered, nothing is applied."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MonthNotEnded(BillingError):
    """A month cannot be closed before it has ended in the business time zone."""
