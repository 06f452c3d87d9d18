"""Every SQL statement the ingest domain runs against its tables; the connection is always passed in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb

LEAD_COLUMNS = (
    "event_id", "user_session_id", "full_name", "email", "phone",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
    "landing_page", "referrer", "ga_client_id", "lead_created_at", "checkout_started_at",
    "marketing_consent", "analytics_consent", "consent_method", "consent_version", "consent_version_current",
    "consent_at", "consent_ip", "consent_user_agent", "status", "received_at", "updated_at",
)  # fmt: skip
CONSENT_COLUMNS = (
    "consent_id", "user_session_id", "event_id", "marketing_consent", "analytics_consent", "consent_method",
    "consent_version", "consent_version_current", "source", "recorded_at", "ip", "user_agent",
)  # fmt: skip
DELIVERY_COLUMNS = (
    "delivery_id", "event_id", "user_session_id", "destination", "kind", "purpose", "idempotency_key",
    "payload", "status", "reason", "next_attempt_at", "created_at", "updated_at",
)  # fmt: skip

_TABLE_COLUMNS = {"leads": LEAD_COLUMNS, "consent_ledger": CONSENT_COLUMNS, "deliveries": DELIVERY_COLUMNS}

Row = Mapping[str, Any]


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


def batch_select(
    columns: Sequence[str], rows: Sequence[Row], casts: Mapping[str, str] | None = None
) -> tuple[str, list[Any]]:
    """A select list producing `rows` in one statement, and its parameters.

    Each column travels as one list parameter, unnested in step with the others, so DuckDB converts the values up
    front instead of calling back into Python while it scans. A column holding one value in every row (a batch's
    timestamp, a fixed status) travels as that one value: converting a list parameter costs more than the rest of
    the statement's work for it. The first column (the key) is always a list, so the select yields every row.
    `casts` names the SQL type of columns whose values need one (a list of only nulls has no type of its own).
    """
    casts = casts or {}
    parts: list[str] = []
    params: list[Any] = []
    for position, column in enumerate(columns):
        values = [_text(row[column]) for row in rows]
        cast = casts.get(column)
        if position > 0 and all(value == values[0] for value in values):
            parts.append(f"?::{cast} as {column}" if cast else f"? as {column}")
            params.append(values[0])
        else:
            parts.append(f"unnest(?::{cast}[]) as {column}" if cast else f"unnest(?) as {column}")
            params.append(values)
    return ", ".join(parts), params


def insert_rows(conn: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Row]) -> None:
    """Append rows to one of the ingest tables in a single vectorised statement."""
    if rows:
        columns = _TABLE_COLUMNS[table]  # a fixed allow-list: table and column names never come from input
        select, params = batch_select(columns, rows)
        conn.execute(f"insert into {table} ({', '.join(columns)}) select {select}", params)


def lead_identity(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> tuple[str, UUID] | None:
    """Email and user_session_id of a stored lead (a point lookup on the primary key)."""
    row = conn.execute("select email, user_session_id from leads where event_id = ?", [event_id]).fetchone()
    return (row[0], row[1]) if row else None


def get_lead(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> dict[str, Any] | None:
    """One stored lead as a column → value mapping."""
    cursor = conn.execute("select * from leads where event_id = ?", [event_id])
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def lead_delivery_states(
    conn: duckdb.DuckDBPyConnection, event_id: UUID, kinds: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """Status and reason of the deliveries of `kinds` for one lead, keyed by destination."""
    rows = conn.execute(
        "select destination, status, reason from deliveries where event_id = ? and kind in (select unnest(?))",
        [event_id, list(kinds)],
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def lead_response_ids(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> tuple[str | None, str | None]:
    """The MailerLite subscriber id and CRM contact id stored on a lead."""
    row = conn.execute(
        "select mailerlite_subscriber_id, crm_contact_id from leads where event_id = ?", [event_id]
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def suppress_pending_deliveries(
    conn: duckdb.DuckDBPyConnection,
    *,
    event_id: UUID | None,
    user_session_id: UUID,
    purposes: Sequence[str],
    reason: str,
    now: datetime,
) -> int:
    """Mark not-yet-sent deliveries of `purposes` for this journey suppressed; return how many."""
    row = conn.execute(
        "update deliveries set status = 'suppressed', reason = ?, next_attempt_at = null, updated_at = ? "
        "where status in ('pending', 'retrying') and purpose in (select unnest(?)) "
        "and (user_session_id = ? or event_id = ?) returning delivery_id",
        [reason, now, list(purposes), user_session_id, event_id],
    ).fetchall()
    return len(row)


def table_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row counts of the ingest tables."""
    row = conn.execute(
        "select (select count(*) from leads), (select count(*) from consent_ledger), "
        "(select count(*) from deliveries), (select count(*) from delivery_attempts), "
        "(select count(*) from stripe_events)"
    ).fetchone()
    names = ("leads", "consent_ledger", "deliveries", "delivery_attempts", "stripe_events")
    return dict(zip(names, (int(value) for value in row or (0,) * len(names)), strict=True))


def deliveries_by_status(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Delivery counts by destination, then status."""
    result: dict[str, dict[str, int]] = {}
    for destination, status, count in conn.execute(
        "select destination, status, count(*) from deliveries group by all order by all"
    ).fetchall():
        result.setdefault(destination, {})[status] = int(count)
    return result


def beat(conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Write the heartbeat row that proves the database accepts commits."""
    conn.execute(
        "insert into service_heartbeat values (1, ?) on conflict (id) do update set beat_at = excluded.beat_at",
        [now],
    )
