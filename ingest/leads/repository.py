"""Every SQL statement lead capture runs against its tables; the connection is always passed in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import duckdb


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
        "select destination, status, reason from deliveries where event_id = ? and kind in (select unnest(?::text[]))",
        [event_id, list(kinds)],
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def lead_response_ids(conn: duckdb.DuckDBPyConnection, event_id: UUID) -> tuple[str | None, str | None]:
    """The MailerLite subscriber id and CRM contact id stored on a lead."""
    row = conn.execute(
        "select mailerlite_subscriber_id, crm_contact_id from leads where event_id = ?", [event_id]
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)
