"""Credit lots: granted, debited soonest-expiry first, forfeited after expiry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Allocation = tuple[str, int]
"""(lot_id, amount_jpy) taken from one lot by one debit."""


@dataclass
class Lot:
    """One grant of credits; `remaining + consumed + forfeited == amount` always."""

    lot_id: str
    amount_jpy: int
    granted_at: datetime
    expires_at: datetime
    source: str
    remaining_jpy: int = -1
    forfeited_jpy: int = 0
    forfeited: bool = False
    expiring_notified: bool = False
    dirty: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if self.remaining_jpy < 0:
            self.remaining_jpy = self.amount_jpy

    @property
    def consumed_jpy(self) -> int:
        return self.amount_jpy - self.remaining_jpy - self.forfeited_jpy

    def usable_at(self, at: datetime) -> bool:
        return not self.forfeited and self.remaining_jpy > 0 and at < self.expires_at

    def take(self, amount_jpy: int) -> int:
        taken = min(amount_jpy, self.remaining_jpy)
        self.remaining_jpy -= taken
        self.dirty = True
        return taken


def new_lot(
    lot_id: str, amount_jpy: int, granted_at: datetime, validity: timedelta, source: str
) -> Lot:
    """A fresh lot that expires `validity` after it was granted.

    Raises OverflowError when that instant is past the representable range.
    """
    return Lot(
        lot_id=lot_id,
        amount_jpy=amount_jpy,
        granted_at=granted_at,
        expires_at=granted_at + validity,
        source=source,
    )


def debit_order(
    lots: Iterable[Lot],
    at: datetime,
    arrived_at: datetime | None = None,
    lateness: timedelta = timedelta(0),
) -> list[Lot]:
    """Lots that can pay at `at` for a record that arrived at `arrived_at`: soonest expiry
    first, then oldest grant, then lot id."""
    usable = [
        lot for lot in lots if lot.usable_at(at) and arrived_in_time(lot, arrived_at, lateness)
    ]
    if len(usable) > 1:  # one usable lot (or none) needs no sort and no key tuples
        usable.sort(key=lambda lot: (lot.expires_at, lot.granted_at, lot.lot_id))
    return usable


def debit(
    lots: Iterable[Lot],
    amount_jpy: int,
    at: datetime,
    arrived_at: datetime | None = None,
    lateness: timedelta = timedelta(0),
) -> tuple[list[Allocation], int]:
    """Take `amount_jpy` from the lots; returns what each lot gave and what was left uncovered."""
    allocations: list[Allocation] = []
    left = amount_jpy
    for lot in debit_order(lots, at, arrived_at, lateness):
        if left == 0:
            break
        taken = lot.take(left)
        allocations.append((lot.lot_id, taken))
        left -= taken
    return allocations, left


def forfeit(lot: Lot) -> int:
    """Close an expired lot; returns the credit it loses."""
    lost = lot.remaining_jpy
    lot.forfeited_jpy += lost
    lot.remaining_jpy = 0
    lot.forfeited = True
    lot.dirty = True
    return lost


def forfeit_passed(lot: Lot, upto: datetime, lateness: timedelta, inclusive: bool) -> bool:
    """Has `expires_at + lateness` been reached by `upto` (passed, unless `inclusive`)?"""
    if lot.forfeited:
        return False
    # `upto - lateness`, never `expires_at + lateness`: a lot dated near year 9999 cannot overflow.
    edge = upto - lateness
    return lot.expires_at <= edge if inclusive else lot.expires_at < edge


def notice_passed(lot: Lot, upto: datetime, notice: timedelta, inclusive: bool) -> bool:
    """Is the lot's `credits_expiring` notice due by `upto`? Never skipped once due, so the
    notice does not depend on whether the worker was running when its moment came."""
    if lot.forfeited or lot.expiring_notified or lot.remaining_jpy <= 0:
        return False
    # expires_at is granted_at + validity, and validity exceeds the notice: no underflow.
    moment = lot.expires_at - notice
    return moment <= upto if inclusive else moment < upto


def arrived_in_time(lot: Lot, arrived_at: datetime | None, lateness: timedelta) -> bool:
    """A lot pays only for records that reached Kafka by `expires_at + lateness`."""
    return arrived_at is None or arrived_at - lateness <= lot.expires_at
