"""What a bulk run is given: how big a database, over how many days, from which seed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BulkSpec:
    """How big a database to draw, over how many days, from which seed."""

    leads: int = 1_000_000
    days: int = 90
    seed: int = 0
    chunk_leads: int = 250_000
    start: datetime = datetime(2025, 1, 6)
