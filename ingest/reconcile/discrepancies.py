"""Our records against each system's own, read from the models (system_records, system_missing, system_unexpected,
system_stale, verified_data_consistency) into the CONTRACT.md shape of `attribution reconcile --json`."""

from __future__ import annotations

import duckdb

from ingest.reconcile.schemas import (
    ReconcileOut,
    RecordSource,
    StaleField,
    System,
    SystemRecords,
    VerifiedConsistency,
)


def _column(conn: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for system, value in conn.execute(sql, params).fetchall():
        found.setdefault(str(system), []).append(str(value))
    return found


def build_reconcile(conn: duckdb.DuckDBPyConnection) -> ReconcileOut:
    """The reconciliation from a connection the models are loaded on."""
    summaries = conn.execute(
        "select system, record_source, as_of, expected, held from system_records order by position"
    ).fetchall()
    missing = _column(conn, "select system, journey_id from system_missing order by system, journey_id", [])
    unexpected = _column(
        conn, "select distinct system, entry from system_unexpected order by system, entry", []
    )
    stale: dict[str, list[StaleField]] = {}
    for system, journey_id, field, ours, theirs in conn.execute(
        "select system, journey_id, field, ours, theirs from system_stale order by system, journey_id, field"
    ).fetchall():
        stale.setdefault(str(system), []).append(
            StaleField(event_id=str(journey_id), field=str(field), ours=ours, theirs=theirs)
        )
    systems = [
        SystemRecords(
            system=System(system),
            source=RecordSource(source),
            as_of=as_of,
            expected=int(expected),
            held=int(held),
            missing=missing.get(system, []),
            unexpected=unexpected.get(system, []),
            stale=stale.get(system, []),
        )
        for system, source, as_of, expected, held in summaries
    ]
    row = conn.execute(
        "select value, target, met, numerator, denominator, verified_systems, unverified_systems "
        "from verified_data_consistency"
    ).fetchall()[0]
    metric = VerifiedConsistency(
        value=float(row[0]),
        target=float(row[1]),
        met=bool(row[2]),
        numerator=int(row[3]),
        denominator=int(row[4]),
        verified_systems=[System(name) for name in row[5]],
        unverified_systems=list(row[6]),
    )
    return ReconcileOut(systems=systems, verified_data_consistency=metric)
