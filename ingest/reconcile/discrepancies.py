"""Our records against each system's own, read from the models (system_records, system_missing, system_unexpected,
system_stale, verified_data_consistency) into the CONTRACT.md shape of `attribution reconcile --json`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import duckdb

from ingest.core.settings import Settings
from ingest.reconcile.models import ModelParams, load_models
from ingest.reconcile.replica import reading
from ingest.reconcile.schemas import (
    ReconcileOut,
    RecordSource,
    StaleField,
    System,
    SystemRecords,
    VerifiedConsistency,
)
from ingest.store.database import Database

T = TypeVar("T")


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


def on_live_models(
    database: Database, settings: Settings, build: Callable[[duckdb.DuckDBPyConnection], T]
) -> T:
    """`build` run now on a DuckDB connection where the models read the live operational store.

    The embedded file: temp views on a fresh cursor of the API's own connection. PostgreSQL: the models are DuckDB
    SQL, so they run on a fresh copy of the store (the same the `database` source of `attribution report` reads).
    """
    if database.engine != "duckdb":
        with reading(settings, "database") as reader:
            return build(reader.conn)
    params = ModelParams.from_settings(settings)

    def compute(cursor: duckdb.DuckDBPyConnection) -> T:
        load_models(cursor, params, temporary=True)
        return build(cursor)

    return database.read(compute)


def live_reconcile(database: Database, settings: Settings) -> ReconcileOut:
    """The reconciliation computed now from the live operational store, on either engine."""
    return on_live_models(database, settings, build_reconcile)
