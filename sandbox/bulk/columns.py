"""The bulk generator's plumbing: numpy arrays as Arrow columns, appended to the store's tables, and the tally.

Times are int64 microseconds since the epoch (naive UTC, like every *_at column); NEVER stands for a null time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ingest.reconcile.models import METRIC_NAMES

US = 1_000_000  # microseconds per second
NEVER = np.iinfo(np.int64).max
LEAD_TABLE, LEDGER_TABLE, DELIVERY_TABLE, ATTEMPT_TABLE = (
    "leads",
    "consent_ledger",
    "deliveries",
    "delivery_attempts",
)
PAYMENT_TABLE, EVENT_TABLE = "payments", "stripe_events"
TABLES = (LEAD_TABLE, LEDGER_TABLE, DELIVERY_TABLE, ATTEMPT_TABLE, PAYMENT_TABLE, EVENT_TABLE)


@dataclass
class Tally:
    """Numerators and denominators accumulated chunk by chunk."""

    counts: dict[str, list[int]] = field(default_factory=lambda: {name: [0, 0] for name in METRIC_NAMES})
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def add(self, metric: str, numerator: int, denominator: int) -> None:
        """Count one chunk's numerator and denominator of a metric."""
        self.counts[metric][0] += int(numerator)
        self.counts[metric][1] += int(denominator)


def uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random version-4 UUIDs as 36-byte strings, without a Python object per value."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S1").reshape(n, 32)
    dash = np.full((n, 1), b"-", dtype="S1")
    parts = [
        hexed[:, :8],
        dash,
        hexed[:, 8:12],
        dash,
        hexed[:, 12:16],
        dash,
        hexed[:, 16:20],
        dash,
        hexed[:, 20:],
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)).view("S36").ravel()


def stripe_ids(rng: np.random.Generator, prefix: str, n: int) -> np.ndarray:
    """n random Stripe-style ids, `<prefix>_` and 24 hex digits, as byte strings."""
    raw = rng.integers(0, 256, size=(n, 12), dtype=np.uint8)
    hexed = np.frombuffer(raw.tobytes().hex().encode(), dtype="S24")
    return np.char.add(prefix.encode() + b"_", hexed)


def as_text(values: np.ndarray) -> pa.Array:
    """A byte-string or object numpy array as an Arrow string column (None stays null)."""
    if values.dtype.kind == "S":
        return pa.array(values, type=pa.binary()).cast(pa.string())
    return pa.array(values, type=pa.string())


def as_times(micros: np.ndarray) -> pa.Array:
    """Microseconds since the epoch as an Arrow timestamp column; NEVER is null."""
    mask = micros == NEVER
    return pa.array(np.where(mask, 0, micros).astype("datetime64[us]"), mask=mask, type=pa.timestamp("us"))


def append_rows(conn: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any], tally: Tally) -> None:
    """Append one Arrow batch to one of the fixed tables above, columns matched by name."""
    batch = pa.table(columns)
    conn.register("_bulk_batch", batch)
    conn.execute(f"insert into {table} by name select * from _bulk_batch")  # noqa: S608 - a fixed table name
    conn.unregister("_bulk_batch")
    tally.rows[table] += batch.num_rows


def only(mask: np.ndarray, values: np.ndarray | str) -> np.ndarray:
    """`values` where `mask` holds, None (a null) elsewhere, as an object array."""
    out = np.full(len(mask), None, dtype=object)
    out[mask] = values[mask] if isinstance(values, np.ndarray) else values
    return out


def latest(*times: np.ndarray) -> np.ndarray:
    """Element-wise latest of several time columns, ignoring NEVER."""
    result: np.ndarray = np.max(np.stack([np.where(t == NEVER, 0, t) for t in times]), axis=0)
    return result
