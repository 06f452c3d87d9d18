"""All SQL against the systems' records (the ext_* tables): replacing a system's records in one transaction, and
reading when each was last pulled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import duckdb
import pyarrow as pa

from ingest.reconcile.schemas import RecordSource, System
from ingest.store.postgres import PgConnection, is_postgres
from ingest.store.rows import batch_select

# The table of each system and its columns (besides pulled_at), in order: fixed names, never from input.
RECORD_TABLES: dict[System, tuple[str, pa.Schema]] = {
    System.STRIPE: (
        "ext_stripe_payment_intents",
        pa.schema(
            [
                ("payment_intent_id", pa.string()),
                ("status", pa.string()),
                ("amount_cents", pa.int64()),
                ("currency", pa.string()),
                ("event_id", pa.string()),
                ("stripe_created_at", pa.timestamp("us")),
            ]
        ),
    ),
    System.MAILERLITE: (
        "ext_mailerlite_subscribers",
        pa.schema(
            [
                ("subscriber_id", pa.string()),
                ("email", pa.string()),
                ("status", pa.string()),
                ("event_id", pa.string()),
                ("payment_status", pa.string()),
                ("subscriber_updated_at", pa.timestamp("us")),
            ]
        ),
    ),
    System.CRM: (
        "ext_crm_contacts",
        pa.schema(
            [
                ("line", pa.int64()),
                ("contact_id", pa.string()),
                ("email", pa.string()),
                ("event_id", pa.string()),
            ]
        ),
    ),
    System.GA4: (
        "ext_ga4_purchases",
        pa.schema([("line", pa.int64()), ("transaction_id", pa.string()), ("event_id", pa.string())]),
    ),
}


@dataclass(frozen=True)
class Records:
    """A system's complete records as of `pulled_at`, to replace whatever was held for it before."""

    system: System
    source: RecordSource
    pulled_at: datetime
    rows: pa.Table
    since: datetime | None = None
    detail: str | None = None


def records_table(system: System, columns: dict[str, list[object]]) -> pa.Table:
    """The rows of one system as the Arrow table its ext_* table takes (columns in order, typed)."""
    _, schema = RECORD_TABLES[system]
    return pa.table({field.name: columns[field.name] for field in schema}, schema=schema)


def replace_records(conn: duckdb.DuckDBPyConnection, batches: Sequence[Records]) -> list[int]:
    """Writer batch handler: each system's previous records deleted and the new ones inserted, in the writer's one
    transaction, so a reader sees the previous pull or this one, never a mix; return the rows inserted.

    The system's ext_pulls row is written first: on PostgreSQL it is the lock that makes two instances replacing
    the same system's records at once take turns (the second deletes what the first inserted, never adding to it).
    """
    inserted = []
    for records in batches:
        table, schema = RECORD_TABLES[records.system]
        if not records.rows.schema.equals(schema):
            raise ValueError(f"records of {records.system} do not have the columns of {table}")
        conn.execute(
            """
            insert into ext_pulls (system, source, pulled_at, since, records, detail) values (?, ?, ?, ?, ?, ?)
            on conflict (system) do update set source = excluded.source, pulled_at = excluded.pulled_at,
                since = excluded.since, records = excluded.records, detail = excluded.detail
            """,
            [
                records.system.value,
                records.source.value,
                records.pulled_at,
                records.since,
                records.rows.num_rows,
                records.detail,
            ],
        )
        conn.execute(f"delete from {table}")  # noqa: S608 - a name from RECORD_TABLES
        if records.rows.num_rows:
            _insert_records(conn, table, schema, records)
        inserted.append(records.rows.num_rows)
    return inserted


def _insert_records(conn: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, records: Records) -> None:
    names = [field.name for field in schema]
    columns = ", ".join(names)
    if is_postgres(conn):  # no Arrow scan there: the columns travel as arrays, unnested in step
        rows = [row | {"pulled_at": records.pulled_at} for row in records.rows.to_pylist()]
        casts = cast(PgConnection, conn).column_types(table)
        select, params = batch_select([*names, "pulled_at"], rows, casts)
        conn.execute(f"insert into {table} ({columns}, pulled_at) select {select}", params)
        return
    conn.register("_ext_records", records.rows)
    try:
        conn.execute(
            f"insert into {table} ({columns}, pulled_at) select {columns}, ? from _ext_records",  # noqa: S608
            [records.pulled_at],
        )
    finally:
        conn.unregister("_ext_records")


@dataclass(frozen=True)
class PullStamp:
    """When a system's records were last replaced, how, and how many."""

    system: System
    source: RecordSource
    pulled_at: datetime
    since: datetime | None
    records: int


def pull_stamps(conn: duckdb.DuckDBPyConnection) -> dict[System, PullStamp]:
    """The latest pull or import of each system that has one."""
    rows = conn.execute("select system, source, pulled_at, since, records from ext_pulls").fetchall()
    return {
        System(row[0]): PullStamp(System(row[0]), RecordSource(row[1]), row[2], row[3], int(row[4]))
        for row in rows
    }
