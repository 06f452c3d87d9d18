"""The one clock every *_at column is stamped with."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now as a naive UTC timestamp, the form every *_at column stores."""
    return datetime.now(UTC).replace(tzinfo=None)
