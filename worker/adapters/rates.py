"""Loads the rate table from JSON configuration."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter

from worker.domain.rating import Rate, RateTable


class _RateEntry(BaseModel):
    country: str = Field(pattern=r"^[A-Z]{2}$")
    unit_price_jpy: int = Field(strict=True, ge=0)
    effective_from: AwareDatetime


_ENTRIES = TypeAdapter(list[_RateEntry])


def load_rate_table(path: Path | None) -> RateTable:
    """The file at `path`, else the table shipped with the worker (JP = JPY 10 per segment)."""
    raw = (
        path.read_bytes()
        if path is not None
        else resources.files("worker").joinpath("rates.json").read_bytes()
    )
    entries = _ENTRIES.validate_json(raw)
    return RateTable(Rate(e.country, e.unit_price_jpy, e.effective_from) for e in entries)
