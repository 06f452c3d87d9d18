"""Every SQL statement the ingest domain runs against its tables; the connection is always passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
import pyarrow as pa

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


def insert_rows(conn: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Row]) -> None:
    """Append rows to one of the ingest tables in a single vectorised statement."""
    if not rows:
        return
    columns = _TABLE_COLUMNS[table]  # a fixed allow-list: table and column names never come from input
    batch = pa.table({column: [_text(row[column]) for row in rows] for column in columns})
    view = f"_{table}_batch"
    conn.register(view, batch)
    try:
        conn.execute(f"insert into {table} ({', '.join(columns)}) select {', '.join(columns)} from {view}")  # noqa: S608
    finally:
        conn.unregister(view)


def find_lead_identities(
    conn: duckdb.DuckDBPyConnection, event_ids: Iterable[UUID]
) -> dict[UUID, tuple[str, UUID]]:
    """Email and user_session_id of the stored leads among `event_ids`."""
    ids = [str(event_id) for event_id in event_ids]
    rows = conn.execute(
        "select event_id, email, user_session_id from leads where event_id in (select unnest(?::uuid[]))",
        [ids],
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


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
