"""All SQL of operating the service: alert states, the alert queue, and the outbox figures Prometheus reads.

Nothing here holds an email or a phone: subjects are destinations and metric names, payloads carry counts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from ingest.core.vocabulary import WAITING

DEAD_SUBJECT = "deliveries_dead"
_WAITING_STATUSES = sorted(status.value for status in WAITING)


class AlertStatus:
    """States of a queued alert."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # the receiver refused it for good (a 4xx other than 429)


@dataclass(frozen=True)
class Observation:
    """A subject seen in a state; `alert` and `payload` say what to send if that is a change."""

    subject: str
    state: str
    default: str  # the state a subject never seen before is in (a circuit: closed; a target: met)
    alert: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """Observations made at one moment; alerts are queued only when `queue` (a webhook is configured)."""

    observations: tuple[Observation, ...]
    now: datetime
    queue: bool


@dataclass(frozen=True)
class DeadSummary:
    """Deliveries that went dead after the cursor, per destination, and the newest one's time."""

    counts: dict[str, int] = field(default_factory=dict)
    newest_at: datetime | None = None

    @property
    def total(self) -> int:
        """How many went dead in all."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class DeadCounted:
    """Move the dead-deliveries cursor to `cursor_at`, queueing `payload` as an alert when given."""

    cursor_at: datetime
    payload: dict[str, Any] | None
    now: datetime
    queue: bool


@dataclass(frozen=True)
class QueuedAlert:
    """The oldest alert still to send."""

    alert_id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime


@dataclass(frozen=True)
class AlertOutcome:
    """What one POST of an alert came to."""

    alert_id: uuid.UUID
    status: str  # AlertStatus
    error: str | None
    now: datetime
    next_attempt_at: datetime


# --- alert states -------------------------------------------------------------------------------------------


def alert_states(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Every subject's last recorded state."""
    rows = conn.execute("select subject, state from alert_states").fetchall()
    return {str(subject): str(state) for subject, state in rows}


def changes(current: dict[str, str], observations: Sequence[Observation]) -> list[Observation]:
    """The observations that change their subject's recorded state."""
    return [item for item in observations if current.get(item.subject, item.default) != item.state]


def _queue_alert(
    conn: duckdb.DuckDBPyConnection, subject: str, payload: dict[str, Any], now: datetime
) -> None:
    conn.execute(
        "insert into alerts (alert_id, alert, subject, payload, status, attempts, next_attempt_at, created_at) "
        "values (?, ?, ?, ?, ?, 0, ?, ?)",
        [
            uuid.UUID(payload["alert_id"]),
            payload["alert"],
            subject,
            json.dumps(payload),
            AlertStatus.PENDING,
            now,
            now,
        ],
    )


def _set_state(conn: duckdb.DuckDBPyConnection, subject: str, state: str, at: datetime) -> None:
    conn.execute(
        "insert into alert_states values (?, ?, ?) "
        "on conflict (subject) do update set state = excluded.state, changed_at = excluded.changed_at",
        [subject, state, at],
    )


def record_observations(conn: duckdb.DuckDBPyConnection, items: Sequence[Observed]) -> list[int]:
    """Writer batch handler: record each change of state and queue its alert in the same transaction.

    The states are read again here, inside the writer's transaction, so two observers racing each other still
    alert once per change. Returns how many alerts each item queued.
    """
    queued = []
    for item in items:
        count = 0
        for observation in changes(alert_states(conn), item.observations):
            _set_state(conn, observation.subject, observation.state, item.now)
            if item.queue:
                _queue_alert(conn, observation.subject, observation.payload, item.now)
                count += 1
        queued.append(count)
    return queued


# --- dead deliveries ----------------------------------------------------------------------------------------


def dead_cursor(conn: duckdb.DuckDBPyConnection) -> datetime | None:
    """Deliveries that went dead after this have not been summarised yet (None: never counted)."""
    row = conn.execute("select changed_at from alert_states where subject = ?", [DEAD_SUBJECT]).fetchone()
    return row[0] if row else None


def dead_since(conn: duckdb.DuckDBPyConnection, cursor_at: datetime) -> DeadSummary:
    """Deliveries whose last change (going dead) came after `cursor_at`, per destination."""
    rows = conn.execute(
        "select destination, count(*), max(updated_at) from deliveries "
        "where status = 'dead' and updated_at > ? group by destination order by destination",
        [cursor_at],
    ).fetchall()
    newest = max((row[2] for row in rows), default=None)
    return DeadSummary({str(row[0]): int(row[1]) for row in rows}, newest)


def record_dead_counted(conn: duckdb.DuckDBPyConnection, items: Sequence[DeadCounted]) -> list[int]:
    """Writer batch handler: advance the dead-deliveries cursor and queue the window's one summary."""
    queued = []
    for item in items:
        _set_state(conn, DEAD_SUBJECT, "counted", item.cursor_at)
        send = item.payload is not None and item.queue
        if item.payload is not None and send:
            _queue_alert(conn, DEAD_SUBJECT, item.payload, item.now)
        queued.append(int(send))
    return queued


# --- the alert queue ----------------------------------------------------------------------------------------


def next_alert(conn: duckdb.DuckDBPyConnection) -> QueuedAlert | None:
    """The oldest alert still pending: alerts go out in the order their changes happened."""
    row = conn.execute(
        "select alert_id, payload, attempts, next_attempt_at from alerts where status = ? "
        "order by created_at, alert_id limit 1",
        [AlertStatus.PENDING],
    ).fetchone()
    if row is None:
        return None
    return QueuedAlert(row[0], json.loads(row[1]), int(row[2]), row[3])


def record_alert_outcomes(conn: duckdb.DuckDBPyConnection, items: Sequence[AlertOutcome]) -> list[None]:
    """Writer batch handler: count the attempt, and mark the alert sent, failed or due again later."""
    for item in items:
        conn.execute(
            "update alerts set status = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
            "sent_at = case when ? = 'sent' then ? end where alert_id = ?",
            [item.status, item.error, item.next_attempt_at, item.status, item.now, item.alert_id],
        )
    return [None for _ in items]


def alerts_pending(conn: duckdb.DuckDBPyConnection) -> int:
    """How many alerts wait to be sent."""
    row = conn.execute("select count(*) from alerts where status = ?", [AlertStatus.PENDING]).fetchone()
    return int(row[0]) if row else 0


# --- outbox figures for Prometheus --------------------------------------------------------------------------


def delivery_counts(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(destination, status, deliveries) for every pair present."""
    rows = conn.execute(
        "select destination, status, count(*) from deliveries group by destination, status"
    ).fetchall()
    return [(str(destination), str(status), int(count)) for destination, status, count in rows]


def oldest_due(conn: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, datetime]:
    """Per destination, when its longest-waiting due delivery became due (pending or retrying, not in the future)."""
    rows = conn.execute(
        "select destination, min(coalesce(next_attempt_at, created_at)) from deliveries "
        "where status in (?, ?) and coalesce(next_attempt_at, created_at) <= ? group by destination",
        [*_WAITING_STATUSES, now],
    ).fetchall()
    return {str(destination): due_at for destination, due_at in rows}
