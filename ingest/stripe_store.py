"""Every SQL statement of the Stripe side (payments, stripe_events, the sync cursor, lead payment state).

The connection is always passed in. Batches are written through registered Arrow tables, so a writer batch of
hundreds of events costs a handful of statements; table and column names come only from the constants here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
import pyarrow as pa

EVENT_COLUMNS = (
    "stripe_event_id", "event_type", "object_id", "stripe_created_at", "received_at", "source", "payload",
    "status", "error", "processing_attempts", "processed_at", "change_key", "duplicate_of",
)  # fmt: skip
PAYMENT_COLUMNS = (
    "payment_intent_id", "event_id", "user_session_id", "amount_cents", "currency", "status", "is_orphan",
    "refunded_cents", "failure_code", "source", "created_at", "updated_at", "succeeded_at", "refunded_at",
    "last_stripe_event_id",
)  # fmt: skip
LEAD_PAYMENT_COLUMNS = ("event_id", "status", "payment_intent_id", "updated_at")

Row = Mapping[str, Any]


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


@contextmanager
def _batch(
    conn: duckdb.DuckDBPyConnection, name: str, columns: Sequence[str], rows: Sequence[Row]
) -> Iterator[str]:
    """Register `rows` as a view for one statement; `name` and `columns` are constants of this module."""
    table = pa.table({column: [_text(row[column]) for row in rows] for column in columns})
    view = f"_{name}_batch"
    conn.register(view, table)
    try:
        yield view
    finally:
        conn.unregister(view)


# --- stripe_events -----------------------------------------------------------------------------------------


def event_statuses(conn: duckdb.DuckDBPyConnection, stripe_event_ids: Iterable[str]) -> dict[str, str]:
    """Status of the stored events among `stripe_event_ids`."""
    ids = list(set(stripe_event_ids))
    if not ids:
        return {}
    rows = conn.execute(
        "select stripe_event_id, status from stripe_events where stripe_event_id in (select unnest(?))", [ids]
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def processed_change_keys(conn: duckdb.DuckDBPyConnection, change_keys: Iterable[str]) -> dict[str, str]:
    """For each change already processed among `change_keys`, the Stripe event that processed it."""
    keys = list(set(change_keys))
    if not keys:
        return {}
    rows = conn.execute(
        "select change_key, min(stripe_event_id) from stripe_events "
        "where status = 'processed' and change_key in (select unnest(?)) group by change_key",
        [keys],
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def insert_events(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Append new Stripe event rows."""
    if not rows:
        return
    columns = ", ".join(EVENT_COLUMNS)
    with _batch(conn, "stripe_events", EVENT_COLUMNS, rows) as view:
        conn.execute(f"insert into stripe_events ({columns}) select {columns} from {view}")  # noqa: S608


def settle_event(
    conn: duckdb.DuckDBPyConnection,
    stripe_event_id: str,
    status: str,
    duplicate_of: str | None,
    now: datetime,
) -> None:
    """Settle a stored event that had failed before; its last error is kept as history."""
    conn.execute(
        "update stripe_events set status = ?, duplicate_of = ?, processed_at = ?, "
        "processing_attempts = processing_attempts + 1 where stripe_event_id = ?",
        [status, duplicate_of, now, stripe_event_id],
    )


def record_event_failure(conn: duckdb.DuckDBPyConnection, row: Row) -> None:
    """Store a failed event with its error, or count one more failed attempt; a settled event keeps its status."""
    values = [_text(row[column]) for column in EVENT_COLUMNS]
    conn.execute(
        f"insert into stripe_events ({', '.join(EVENT_COLUMNS)}) values ({', '.join('?' for _ in EVENT_COLUMNS)}) "  # noqa: S608
        "on conflict (stripe_event_id) do update set "
        "status = case when stripe_events.status in ('processed', 'ignored', 'duplicate') "
        "then stripe_events.status else 'failed' end, "
        "error = excluded.error, processing_attempts = stripe_events.processing_attempts + 1",
        values,
    )


def event_status_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Stored Stripe events by status."""
    rows = conn.execute("select status, count(*) from stripe_events group by status").fetchall()
    return {row[0]: int(row[1]) for row in rows}


def get_event(conn: duckdb.DuckDBPyConnection, stripe_event_id: str) -> dict[str, Any] | None:
    """One stored Stripe event as a column → value mapping."""
    cursor = conn.execute("select * from stripe_events where stripe_event_id = ?", [stripe_event_id])
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


# --- payments ----------------------------------------------------------------------------------------------


def get_payments(
    conn: duckdb.DuckDBPyConnection, payment_intent_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Stored payments among `payment_intent_ids`, keyed by PaymentIntent id."""
    ids = list(set(payment_intent_ids))
    if not ids:
        return {}
    columns = ", ".join(PAYMENT_COLUMNS)
    rows = conn.execute(
        f"select {columns} from payments where payment_intent_id in (select unnest(?))",  # noqa: S608
        [ids],
    ).fetchall()
    return {row[0]: dict(zip(PAYMENT_COLUMNS, row, strict=True)) for row in rows}


def upsert_payments(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Insert payments, replacing the stored row of each PaymentIntent already known (one row per id)."""
    if not rows:
        return
    columns = ", ".join(PAYMENT_COLUMNS)
    with _batch(conn, "payments", PAYMENT_COLUMNS, rows) as view:
        conn.execute(f"insert or replace into payments ({columns}) select {columns} from {view}")  # noqa: S608


def insert_payment_if_absent(conn: duckdb.DuckDBPyConnection, row: Row) -> None:
    """Insert one payment unless its PaymentIntent is already stored."""
    conn.execute(
        f"insert into payments ({', '.join(PAYMENT_COLUMNS)}) values ({', '.join('?' for _ in PAYMENT_COLUMNS)}) "  # noqa: S608
        "on conflict (payment_intent_id) do nothing",
        [_text(row[column]) for column in PAYMENT_COLUMNS],
    )


def get_payment(conn: duckdb.DuckDBPyConnection, payment_intent_id: str) -> dict[str, Any] | None:
    """One stored payment."""
    return get_payments(conn, [payment_intent_id]).get(payment_intent_id)


def payments_of_lead(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> list[dict[str, Any]]:
    """Every payment naming one lead, oldest first."""
    columns = ", ".join(PAYMENT_COLUMNS)
    rows = conn.execute(
        f"select {columns} from payments where event_id = ? order by created_at",  # noqa: S608
        [event_id],
    ).fetchall()
    return [dict(zip(PAYMENT_COLUMNS, row, strict=True)) for row in rows]


# --- leads and consent, as the payment side needs them ----------------------------------------------------


@dataclass(frozen=True)
class LeadJourney:
    """What payment processing needs of a stored lead."""

    event_id: UUID
    user_session_id: UUID
    status: str
    payment_intent_id: str | None


def lead_journeys(conn: duckdb.DuckDBPyConnection, event_ids: Iterable[UUID]) -> dict[UUID, LeadJourney]:
    """The stored leads among `event_ids`."""
    ids = [str(event_id) for event_id in set(event_ids)]
    if not ids:
        return {}
    rows = conn.execute(
        "select event_id, user_session_id, status, payment_intent_id from leads "
        "where event_id in (select unnest(?::uuid[]))",
        [ids],
    ).fetchall()
    return {row[0]: LeadJourney(*row) for row in rows}


def update_lead_payments(conn: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    """Set leads' status and, where none is linked yet, their PaymentIntent."""
    if not rows:
        return
    with _batch(conn, "lead_payments", LEAD_PAYMENT_COLUMNS, rows) as view:
        conn.execute(
            f"update leads set status = b.status, "  # noqa: S608
            "payment_intent_id = coalesce(leads.payment_intent_id, b.payment_intent_id), updated_at = b.updated_at "
            f"from {view} b where leads.event_id = b.event_id::uuid"
        )


def link_payment_intent(
    conn: duckdb.DuckDBPyConnection, event_id: UUID, payment_intent_id: str, now: datetime
) -> None:
    """Record a lead's PaymentIntent."""
    conn.execute(
        "update leads set payment_intent_id = ?, updated_at = ? where event_id = ?",
        [payment_intent_id, now, event_id],
    )


@dataclass(frozen=True)
class ConsentInForce:
    """The latest consent decision recorded for a journey."""

    marketing: bool
    analytics: bool
    recorded_at: datetime


def consent_in_force(
    conn: duckdb.DuckDBPyConnection, journeys: Iterable[tuple[UUID, UUID]]
) -> dict[UUID, ConsentInForce]:
    """The latest consent_ledger row for each (event_id, user_session_id), matched on either id."""
    pairs = list(set(journeys))
    if not pairs:
        return {}
    # Two equi-joins instead of one join on "event_id or session": an OR condition would be a nested loop.
    rows = conn.execute(
        "with wanted as (select unnest(?::uuid[]) as event_id, unnest(?::uuid[]) as user_session_id), "
        "matches as ("
        "  select w.event_id, c.marketing_consent, c.analytics_consent, c.recorded_at "
        "  from wanted w join consent_ledger c on c.event_id = w.event_id "
        "  union all "
        "  select w.event_id, c.marketing_consent, c.analytics_consent, c.recorded_at "
        "  from wanted w join consent_ledger c on c.user_session_id = w.user_session_id) "
        "select event_id, arg_max(marketing_consent, recorded_at), arg_max(analytics_consent, recorded_at), "
        "max(recorded_at) from matches group by event_id",
        [[str(pair[0]) for pair in pairs], [str(pair[1]) for pair in pairs]],
    ).fetchall()
    return {row[0]: ConsentInForce(bool(row[1]), bool(row[2]), row[3]) for row in rows}


def existing_delivery_keys(conn: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> set[str]:
    """The idempotency keys among `keys` that already have a delivery row."""
    wanted = list(set(keys))
    if not wanted:
        return set()
    rows = conn.execute(
        "select idempotency_key from deliveries where idempotency_key in (select unnest(?))", [wanted]
    ).fetchall()
    return {row[0] for row in rows}


def deliveries_of_lead(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> list[dict[str, Any]]:
    """Every delivery row of one lead, oldest first."""
    cursor = conn.execute("select * from deliveries where event_id = ? order by created_at, kind", [event_id])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- sync cursor -------------------------------------------------------------------------------------------


def get_sync_cursor(conn: duckdb.DuckDBPyConnection, name: str) -> datetime | None:
    """Where the named sync left off (events created at or after it are still to be checked)."""
    row = conn.execute("select created_cursor_at from stripe_sync_cursor where name = ?", [name]).fetchone()
    return row[0] if row else None


def set_sync_cursor(
    conn: duckdb.DuckDBPyConnection, name: str, created_cursor_at: datetime, now: datetime
) -> None:
    """Move the named sync cursor."""
    conn.execute(
        "insert into stripe_sync_cursor values (?, ?, ?) on conflict (name) do update set "
        "created_cursor_at = excluded.created_cursor_at, updated_at = excluded.updated_at",
        [name, created_cursor_at, now],
    )
