"""The one clock every *_at column is stamped with, and the bounded timestamps the domain accepts.

Every stored timestamp is naive UTC. A timestamp from outside (a request body or query, a webhook payload) must
fall within [EARLIEST, LATEST): a year-1 or year-9999 date is junk, and near those ends an offset such as +14:00
cannot even be converted to UTC. Answers carry aware UTC timestamps, so clients read `...+00:00`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_RANGE = f"between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)"


def utcnow() -> datetime:
    """Now as a naive UTC timestamp, the form every *_at column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def bounded_utc(value: datetime) -> datetime:
    """A timestamp from outside as naive UTC; a naive one is read as UTC. Out of range: ValueError naming it."""
    # Years well inside the range convert safely whatever the offset (at most a day); check them before converting.
    if not EARLIEST.year <= value.year < LATEST.year:
        raise ValueError(f"must be {_RANGE}")
    utc = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must be {_RANGE}")
    return utc.replace(tzinfo=None)


def from_unix(seconds: int) -> datetime:
    """A Unix timestamp (Stripe's `created`) as naive UTC; out of range: ValueError naming the range."""
    if not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
        raise ValueError(f"must be {_RANGE}")
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# An input timestamp (body or query): validated into the range, stored as naive UTC.
InputTimestamp = Annotated[datetime, AfterValidator(bounded_utc)]
# An answer's timestamp: the stored naive UTC made aware, so it is an RFC 3339 `date-time` with its offset.
UtcTimestamp = Annotated[datetime, AfterValidator(_aware)]
