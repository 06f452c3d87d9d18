"""All SQL of operating the service: alert states, the alert queue, and the outbox figures Prometheus reads.

Nothing here holds an email or a phone: subjects are destinations and metric names, payloads carry counts.

Written for several instances on one PostgreSQL database: a change of state is recorded by a conditional upsert
(only the transaction that moves a subject's state queues its alert), the dead-deliveries cursor moves by compare
and set (one monitor summarises a window), and an alert is claimed with a lease before it is sent (one sender POSTs
it; only the holder of the claim records the outcome). The same SQL runs on the embedded file.
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
from ingest.store.postgres import is_postgres

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
    """Move the dead-deliveries cursor from `previous` (None: never set) to `cursor_at`, queueing `payload` as an
    alert when given; nothing happens when another monitor moved it from `previous` first."""

    cursor_at: datetime
    payload: dict[str, Any] | None
    now: datetime
    queue: bool
    previous: datetime | None = None


@dataclass(frozen=True)
class QueuedAlert:
    """The oldest alert still to send; `claim_id` is set once a sender has claimed it (`claim_alerts`)."""

    alert_id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None = None  # another sender holds it until then
    claim_id: uuid.UUID | None = None

    def due_at(self) -> datetime:
        """When it may be claimed: its next attempt, or later while another sender's lease runs."""
        if self.lease_until is not None and self.lease_until > self.next_attempt_at:
            return self.lease_until
        return self.next_attempt_at


@dataclass(frozen=True)
class AlertClaim:
    """Claim `alert_id` for one POST: nobody else may send it until `lease_until`."""

    alert_id: uuid.UUID
    claim_id: uuid.UUID
    now: datetime
    lease_until: datetime


@dataclass(frozen=True)
class AlertOutcome:
    """What one POST of an alert came to, under the claim it was sent with."""

    alert_id: uuid.UUID
    status: str  # AlertStatus
    error: str | None
    now: datetime
    next_attempt_at: datetime
    claim_id: uuid.UUID | None = None


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


def _change_state(conn: duckdb.DuckDBPyConnection, subject: str, state: str, at: datetime) -> bool:
    """Record `state` unless the subject is in it already; whether this statement changed it.

    On PostgreSQL another instance may be recording the same change at the same moment: the upsert waits for its
    row, then finds the state already moved (the WHERE is evaluated on the committed row), so one of them alerts.
    """
    changed = conn.execute(
        "insert into alert_states (subject, state, changed_at) values (?, ?, ?) "
        "on conflict (subject) do update set state = excluded.state, changed_at = excluded.changed_at "
        "where alert_states.state <> excluded.state returning subject",
        [subject, state, at],
    ).fetchall()
    return bool(changed)


def record_observations(conn: duckdb.DuckDBPyConnection, items: Sequence[Observed]) -> list[int]:
    """Writer batch handler: record each change of state and queue its alert in the same transaction.

    The states are read again here, inside the writer's transaction, and each is moved by a conditional upsert, so
    observers racing each other (in this process or in other instances) alert once per change. Returns how many
    alerts each item queued.
    """
    queued = []
    for item in items:
        count = 0
        for observation in changes(alert_states(conn), item.observations):
            if _change_state(conn, observation.subject, observation.state, item.now) and item.queue:
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


def _move_dead_cursor(conn: duckdb.DuckDBPyConnection, previous: datetime | None, to: datetime) -> bool:
    """Compare and set: move the cursor from `previous` to `to`; whether it was still at `previous`."""
    if previous is None:
        moved = conn.execute(
            "insert into alert_states (subject, state, changed_at) values (?, 'counted', ?) "
            "on conflict (subject) do nothing returning subject",
            [DEAD_SUBJECT, to],
        ).fetchall()
    else:
        moved = conn.execute(
            "update alert_states set changed_at = ? where subject = ? and changed_at = ? returning subject",
            [to, DEAD_SUBJECT, previous],
        ).fetchall()
    return bool(moved)


def record_dead_counted(conn: duckdb.DuckDBPyConnection, items: Sequence[DeadCounted]) -> list[int]:
    """Writer batch handler: advance the dead-deliveries cursor and queue the window's one summary.

    Two monitors that read the same cursor summarise the same window: the first to move the cursor queues its
    summary, the other moves nothing and queues nothing (its deliveries are counted from the new cursor on).
    """
    queued = []
    for item in items:
        moved = _move_dead_cursor(conn, item.previous, item.cursor_at)
        send = moved and item.payload is not None and item.queue
        if send and item.payload is not None:
            _queue_alert(conn, DEAD_SUBJECT, item.payload, item.now)
        queued.append(int(send))
    return queued


# --- the alert queue ----------------------------------------------------------------------------------------


_ALERT_COLUMNS = "alert_id, payload, attempts, next_attempt_at, lease_until, claim_id"


def _queued(row: Sequence[Any]) -> QueuedAlert:
    return QueuedAlert(row[0], json.loads(row[1]), int(row[2]), row[3], row[4], row[5])


def next_alert(conn: duckdb.DuckDBPyConnection) -> QueuedAlert | None:
    """The oldest alert still pending: alerts go out in the order their changes happened.

    It may be leased by another sender (`lease_until`): the next one then waits for it, so the order holds across
    instances too.
    """
    row = conn.execute(
        f"select {_ALERT_COLUMNS} from alerts where status = ? order by created_at, alert_id limit 1",  # noqa: S608
        [AlertStatus.PENDING],
    ).fetchone()
    return None if row is None else _queued(row)


def claim_alerts(conn: duckdb.DuckDBPyConnection, items: Sequence[AlertClaim]) -> list[QueuedAlert | None]:
    """Writer batch handler: lease each alert to its claimant while it is pending, due and leased to nobody else;
    None where it is not (sent meanwhile, or claimed by another sender first)."""
    claimed: list[QueuedAlert | None] = []
    for item in items:
        claimable = "alert_id = ? and status = ? and next_attempt_at <= ? and (lease_until is null or lease_until <= ?)"
        params = [item.alert_id, AlertStatus.PENDING, item.now, item.now]
        # Another instance claiming it right now holds its row: skip it instead of waiting for that commit.
        if (
            is_postgres(conn)
            and not conn.execute(
                f"select alert_id from alerts where {claimable} for update skip locked",  # noqa: S608
                params,
            ).fetchall()
        ):
            claimed.append(None)
            continue
        row = conn.execute(
            f"update alerts set lease_until = ?, claim_id = ? where {claimable} returning {_ALERT_COLUMNS}",  # noqa: S608
            [item.lease_until, item.claim_id, *params],
        ).fetchone()
        claimed.append(None if row is None else _queued(row))
    return claimed


def record_alert_outcomes(conn: duckdb.DuckDBPyConnection, items: Sequence[AlertOutcome]) -> list[bool]:
    """Writer batch handler: count the attempt, and mark the alert sent, failed or due again later; the lease is
    released. Only under the claim it was sent with: an answer that came after another sender took the alert over
    (the lease ran out) changes nothing. Returns whether each outcome was recorded."""
    recorded = []
    for item in items:
        row = conn.execute(
            "update alerts set status = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
            "sent_at = case when ? = 'sent' then ? end, lease_until = null, claim_id = null "
            "where alert_id = ? and claim_id = ? returning alert_id",
            [
                item.status,
                item.error,
                item.next_attempt_at,
                item.status,
                item.now,
                item.alert_id,
                item.claim_id,
            ],
        ).fetchone()
        recorded.append(row is not None)
    return recorded


def release_alert_claims(conn: duckdb.DuckDBPyConnection, claims: Sequence[uuid.UUID]) -> list[None]:
    """Writer batch handler: give up claims whose POST was abandoned (the sender stopped), so the alert goes out
    at once after a restart or from another instance, not after its lease runs out."""
    for claim_id in claims:
        conn.execute("update alerts set lease_until = null, claim_id = null where claim_id = ?", [claim_id])
    return [None for _ in claims]


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
