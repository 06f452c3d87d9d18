"""What the store itself reports: row counts for the admin status, the heartbeat behind /readyz."""

from __future__ import annotations

from datetime import datetime

import duckdb


def table_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row counts of the ingest tables."""
    row = conn.execute(
        "select (select count(*) from leads), (select count(*) from consent_ledger), "
        "(select count(*) from deliveries), (select count(*) from delivery_attempts), "
        "(select count(*) from stripe_events)"
    ).fetchone()
    names = ("leads", "consent_ledger", "deliveries", "delivery_attempts", "stripe_events")
    return dict(zip(names, (int(value) for value in row or (0,) * len(names)), strict=True))


def beat(conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Write the heartbeat row that proves the database accepts commits."""
    conn.execute(
        "insert into service_heartbeat values (1, ?) on conflict (id) do update set beat_at = excluded.beat_at",
        [now],
    )
