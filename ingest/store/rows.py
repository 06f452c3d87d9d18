"""Rows in, in bulk: the columns of the ingest tables and the one vectorised insert every feature uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any
from uuid import UUID

import duckdb

from ingest.store.postgres import PgConnection

LEAD_COLUMNS = (
    "event_id", "user_session_id", "full_name", "email", "phone",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
    "landing_page", "referrer", "ga_client_id", "lead_created_at", "checkout_started_at",
    "marketing_consent", "analytics_consent", "consent_method", "consent_version", "consent_version_current",
    "consent_at", "consent_ip", "consent_user_agent", "status", "received_at", "updated_at", "fbp", "fbc",
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
        # On the writer thread, per value of every batch: kept to C-level loops (no call per value).
        values = [str(value) if isinstance(value, UUID) else value for value in map(itemgetter(column), rows)]
        cast = casts.get(column)
        if position > 0 and values.count(values[0]) == len(values):
            parts.append(f"?::{cast} as {column}" if cast else f"? as {column}")
            params.append(values[0])
        else:
            parts.append(f"unnest(?::{cast}[]) as {column}" if cast else f"unnest(?) as {column}")
            params.append(values)
    return ", ".join(parts), params


def insert_rows(conn: duckdb.DuckDBPyConnection | PgConnection, table: str, rows: Sequence[Row]) -> None:
    """Append rows to one of the ingest tables in a single vectorised statement."""
    if rows:
        columns = _TABLE_COLUMNS[table]  # a fixed allow-list: table and column names never come from input
        # PostgreSQL casts an array parameter to a column's type only when told (text to uuid, to jsonb...).
        casts = conn.column_types(table) if isinstance(conn, PgConnection) else None
        select, params = batch_select(columns, rows, casts)
        conn.execute(f"insert into {table} ({', '.join(columns)}) select {select}", params)
