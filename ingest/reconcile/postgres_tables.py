"""PostgreSQL's tables read into DuckDB from one snapshot: what `attribution warehouse` brings over each round (only
what changed, by policy) and what `report --source database` copies whole on PostgreSQL.

Policies, by what the catalog says of a table (the reasoning is in ingest/reconcile/warehouse.py):
- changes: a primary key and change_xid (leads, deliveries, payments, stripe_events, unlinked_refunds, alerts):
  each row read replaces the row of the same key.
- appended: change_xid and no key (consent_ledger, delivery_attempts: append-only, never updated): rows read are
  appended.
- pulled: a system's records (ext_*) are only ever replaced whole, in one transaction with its ext_pulls row, so a
  table is copied whole when that row is a new version (its xmin changed), and left alone otherwise.
- whole: the rest (schema_migrations, ext_pulls, stripe_sync_cursor, alert_states, service_heartbeat, and any
  table without change_xid): a handful of rows, copied whole and compared.
No stamped table deletes rows (a deletion would not be seen); a table that must delete belongs to the last two.

Transfer: `COPY (select ...) TO STDOUT (format csv)` streamed into DuckDB's CSV reader in files of whole rows
(CHUNK_BYTES each), typed by the embedded schema, so no row becomes a Python object and a table of any size needs
CHUNK_BYTES of disk at a time. The DuckDB tables have the embedded schema's columns and no constraints.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import psycopg
from psycopg import sql

from ingest.core.settings import Settings
from ingest.reconcile.replica import Reader, ReaderUnavailable
from ingest.reconcile.repository import RECORD_TABLES
from ingest.store.database import available_migrations, migrate
from ingest.store.postgres import describe
from ingest.store.transfer import CHANGE_COLUMN, first_line, postgres_columns, scrubbed

STATE_TABLE = "warehouse_state"
CHUNK_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10
APPLICATION_NAME = "attribution-warehouse"  # how its sessions show in pg_stat_activity
_PULLED_TABLES = {table: system.value for system, (table, _) in RECORD_TABLES.items()}
_DELTA = "_warehouse_delta"
# Text the way DuckDB's CSV reader expects it, whatever the server's defaults: ISO dates, exact floats, UTF-8.
_SESSION = (
    "set datestyle = 'ISO, YMD'",
    "set extra_float_digits = 1",
    "set client_encoding = 'UTF8'",
    "set time zone 'UTC'",
)
Policy = Literal["changes", "appended", "pulled", "whole"]


class WarehouseError(Exception):
    """PostgreSQL cannot be read (or the warehouse cannot do its round); the message says why in one line, never
    with the URL's password."""


class WarehouseStopped(Exception):
    """stop() was asked for: the round in progress was abandoned, the base and the replica are as they were."""


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- PostgreSQL: one snapshot, the catalog, the rows ------------------------------------------------------------


def connect_postgres(url: str) -> psycopg.Connection[Any]:
    """A read-only REPEATABLE READ connection whose text output DuckDB reads exactly; WarehouseError naming
    ATTRIBUTION_DATABASE_URL when it cannot be had."""
    try:
        raw = psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name=APPLICATION_NAME
        )
    except psycopg.Error as exc:
        raise WarehouseError(
            f"cannot connect to PostgreSQL at {describe(url)} (ATTRIBUTION_DATABASE_URL): "
            f"{scrubbed(first_line(exc), url)}"
        ) from None
    try:
        for statement in _SESSION:
            raw.execute(statement)
        raw.autocommit = False
        raw.read_only = True
        raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    except psycopg.Error as exc:
        raw.close()
        raise WarehouseError(f"PostgreSQL at {describe(url)}: {scrubbed(first_line(exc), url)}") from None
    return raw


@dataclass(frozen=True)
class Snapshot:
    """The round's view of PostgreSQL: which database, at which schema version, and which transactions it sees."""

    # host:port/database#oid: another database (or a restored one) makes the next round a full copy.
    source: str
    schema_version: int
    snapshot: str  # pg_snapshot as text: xmin:xmax:running ids
    xmin: int


def take_snapshot(pg: psycopg.Connection[Any], url: str) -> Snapshot:
    """The first statement of the round's transaction, so the snapshot it reports is the one every read uses."""
    row = pg.execute(
        "select pg_current_snapshot()::text, pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
        "(select oid from pg_database where datname = current_database())::bigint, "
        "to_regclass('schema_migrations') is not null"
    ).fetchone()
    assert row is not None
    snapshot, xmin, oid, migrated = row
    version = 0
    if migrated:
        found = pg.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()
        version = int(found[0]) if found else 0
    shipped = max(number for number, _, _ in available_migrations("postgresql"))
    if version < shipped:
        raise WarehouseError(
            f"the PostgreSQL database at {describe(url)} is not migrated (schema {version}, this version needs "
            f"{shipped}); run `attribution db migrate`"
        )
    return Snapshot(f"{describe(url)}#{oid}", version, str(snapshot), int(xmin))


def _postgres_catalog(pg: psycopg.Connection[Any]) -> tuple[dict[str, set[str]], dict[str, tuple[str, ...]]]:
    """Columns of each table of the public schema, and the primary key of those that have one."""
    columns = postgres_columns(pg)
    keys: dict[str, list[tuple[int, str]]] = {}
    for table, position, column in pg.execute(
        "select c.relname, k.ordinality, a.attname from pg_index i join pg_class c on c.oid = i.indrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "cross join lateral unnest(i.indkey) with ordinality as k(attnum, ordinality) "
        "join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum "
        "where n.nspname = 'public' and i.indisprimary"
    ).fetchall():
        keys.setdefault(str(table), []).append((int(position), str(column)))
    return columns, {table: tuple(name for _, name in sorted(parts)) for table, parts in keys.items()}


def pull_versions(pg: psycopg.Connection[Any], tables: set[str]) -> dict[str, str]:
    """The version (xmin) of each system's ext_pulls row, by the ext_* table it stamps."""
    if "ext_pulls" not in tables:
        return {}
    rows = pg.execute("select system, xmin::text from ext_pulls").fetchall()
    by_system = {str(system): str(version) for system, version in rows}
    return {table: by_system[system] for table, system in _PULLED_TABLES.items() if system in by_system}


# --- DuckDB: the shape of the tables, and loading CSV into them ---------------------------------------------------


@functools.cache
def duckdb_shape() -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Every table of the embedded schema (the DuckDB migrations of this version) with its columns and types."""
    shape = duckdb.connect()
    try:
        logging.getLogger("ingest.store.database").disabled = True  # 11 "migration applied" lines per copy
        try:
            migrate(shape)
        finally:
            logging.getLogger("ingest.store.database").disabled = False
        rows = shape.execute(
            "select table_name, column_name, data_type from duckdb_columns() "
            "where database_name = current_database() and schema_name = 'main' "
            "order by table_name, column_index"
        ).fetchall()
    finally:
        shape.close()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        tables.setdefault(str(table), []).append((str(column), str(kind)))
    return tuple((table, tuple(columns)) for table, columns in tables.items())


def create_tables(base: duckdb.DuckDBPyConnection) -> None:
    """Replace every table of `base` by an empty one of the embedded schema (no constraints: rows come checked)."""
    for (table,) in base.execute(
        "select table_name from duckdb_tables() where database_name = current_database() and schema_name = 'main'"
    ).fetchall():
        base.execute(f"drop table {_quoted(str(table))}")
    for table, columns in duckdb_shape():
        body = ", ".join(f"{_quoted(name)} {kind}" for name, kind in columns)  # names and types of our schema
        base.execute(f"create table {_quoted(table)} ({body})")
    base.execute(
        f"create table {STATE_TABLE} (source varchar not null, schema_version integer not null, "
        "snapshot varchar not null, taken_at timestamp not null, published boolean not null, pulls varchar not null)"
    )


def _csv_reader(columns: tuple[tuple[str, str], ...]) -> str:
    """read_csv of one chunk of PostgreSQL's CSV (the path is its parameter): NULL unquoted and empty, "" an empty
    string, rows ended by a line feed alone (a quoted CR LF belongs to a value), typed as the table's columns."""
    spec = ", ".join(f"{_string(name)}: {_string(kind)}" for name, kind in columns)
    return (
        "read_csv(?, header = false, delim = ',', quote = '\"', escape = '\"', nullstr = '', new_line = '\\n', "
        f"allow_quoted_nulls = false, auto_detect = false, columns = {{{spec}}})"
    )


class _Chunks:
    """A COPY's CSV stream cut into files of whole rows (a newline outside quotes ends a row), each loaded as soon as
    it is written, so a table of any size needs CHUNK_BYTES of disk at a time."""

    def __init__(self, folder: Path, load: Callable[[Path], None], limit: int = CHUNK_BYTES) -> None:
        self.path = folder / "chunk.csv"
        self.load = load
        self.limit = limit
        self.pending = bytearray()

    def write(self, block: bytes | bytearray | memoryview) -> None:
        self.pending += block
        if len(self.pending) >= self.limit:
            self._cut(final=False)

    def close(self) -> None:
        self._cut(final=True)

    def _cut(self, *, final: bool) -> None:
        data = self.pending
        end = len(data)
        if not final:
            end = data.rfind(b"\n")
            while end >= 0 and data.count(b'"', 0, end) % 2:  # inside a quoted value: an earlier newline
                end = data.rfind(b"\n", 0, end)
            end += 1
        if end <= 0:
            return
        self.path.write_bytes(data[:end])
        del data[:end]
        try:
            self.load(self.path)
        finally:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class TablePlan:
    """How one table is brought over: the columns read (with their DuckDB types), its policy and its key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    policy: Policy
    key: tuple[str, ...]


def plan_tables(pg: psycopg.Connection[Any]) -> list[TablePlan]:
    """Each table of the embedded schema that PostgreSQL has, with the policy its catalog calls for."""
    pg_columns, pg_keys = _postgres_catalog(pg)
    plans = []
    for table, columns in duckdb_shape():
        if table not in pg_columns:
            continue
        shared = tuple((name, kind) for name, kind in columns if name in pg_columns[table])
        key = pg_keys.get(table, ())
        policy: Policy
        if table in _PULLED_TABLES:
            policy = "pulled"
        elif CHANGE_COLUMN in pg_columns[table]:
            policy = "changes" if key else "appended"
        else:
            policy = "whole"
        plans.append(TablePlan(table, shared, policy, key))
    return plans


class TableLoader:
    """Brings tables of one PostgreSQL snapshot into a DuckDB connection, by policy (`stopping` abandons a copy)."""

    def __init__(
        self,
        pg: psycopg.Connection[Any],
        base: duckdb.DuckDBPyConnection,
        folder: Path,
        stopping: threading.Event,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.pg = pg
        self.base = base
        self.folder = folder
        self.stopping = stopping
        self.chunk_bytes = chunk_bytes

    def load(
        self, plan: TablePlan, since: str | None, pulls_before: dict[str, str], pulls_now: dict[str, str]
    ) -> int:
        """Rows brought over for one table: those written since the snapshot `since` (None: all of them, into an
        empty table); a system's records when their pull changed between `pulls_before` and `pulls_now`."""
        table = _quoted(plan.name)
        if since is None:
            return self._copy(plan, plan.name)
        if plan.policy == "pulled":
            if pulls_now.get(plan.name) == pulls_before.get(plan.name):
                return 0
            self.base.execute(f"delete from {table}")  # noqa: S608 - a name of our schema
            return self._copy(plan, plan.name)
        if plan.policy == "appended":
            return self._copy(plan, plan.name, _changed_since(since))
        self.base.execute(f"create or replace temp table {_DELTA} as select * from {table} limit 0")  # noqa: S608
        try:
            if plan.policy == "changes":
                count = self._copy(plan, _DELTA, _changed_since(since))
                if count:
                    match = " and ".join(f"{table}.{_quoted(c)} = {_DELTA}.{_quoted(c)}" for c in plan.key)
                    self.base.execute(f"delete from {table} using {_DELTA} where {match}")  # noqa: S608
                    self.base.execute(f"insert into {table} by name select * from {_DELTA}")  # noqa: S608
                return count
            count = self._copy(plan, _DELTA)
            differs = self.base.execute(
                f"select exists (select * from {_DELTA} except all select * from {table}) "  # noqa: S608
                f"or exists (select * from {table} except all select * from {_DELTA})"
            ).fetchone()
            if not differs or not differs[0]:
                return 0
            self.base.execute(f"delete from {table}")  # noqa: S608
            self.base.execute(f"insert into {table} by name select * from {_DELTA}")  # noqa: S608
            return count
        finally:
            self.base.execute(f"drop table if exists {_DELTA}")

    def _copy(self, plan: TablePlan, into: str, where: sql.Composable | None = None) -> int:
        """COPY the plan's columns (rows matching `where`) from PostgreSQL into the DuckDB table `into`."""
        names = ", ".join(_quoted(name) for name, _ in plan.columns)
        insert = f"insert into {_quoted(into)} ({names}) select * from {_csv_reader(plan.columns)}"  # noqa: S608
        loaded = [0]

        def load(path: Path) -> None:
            row = self.base.execute(insert, [str(path)]).fetchone()
            loaded[0] += int(row[0]) if row else 0

        statement = sql.SQL("copy (select {columns} from {table} {where}) to stdout (format csv)").format(
            columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in plan.columns),
            table=sql.Identifier(plan.name),
            where=where if where is not None else sql.SQL(""),
        )
        chunks = _Chunks(self.folder, load, self.chunk_bytes)
        with self.pg.cursor() as cursor, cursor.copy(statement) as copy:
            for block in copy:
                if self.stopping.is_set():
                    raise WarehouseStopped
                chunks.write(block)
        chunks.close()
        return loaded[0]


def _changed_since(snapshot: str) -> sql.Composed:
    """Rows written by transactions the earlier snapshot did not see; the first test is the index's range."""
    xmin = int(snapshot.split(":")[0])
    return sql.SQL(
        "where {column} >= {xmin} and not pg_visible_in_snapshot({column}::text::xid8, {snapshot}::pg_snapshot)"
    ).format(column=sql.Identifier(CHANGE_COLUMN), xmin=sql.Literal(xmin), snapshot=sql.Literal(snapshot))


# --- `report --source database` on PostgreSQL -------------------------------------------------------------------


def copy_postgres(url: str, path: Path) -> dict[str, int]:
    """Every table of the PostgreSQL database at `url`, from one snapshot, into a new DuckDB file at `path`; return
    the rows copied per table."""
    pg = connect_postgres(url)
    base = duckdb.connect(str(path))
    try:
        with pg.transaction():
            take_snapshot(pg, url)
            base.begin()
            create_tables(base)
            with tempfile.TemporaryDirectory(prefix="attribution-report-") as folder:
                loader = TableLoader(pg, base, Path(folder), threading.Event())
                rows = {plan.name: loader.load(plan, None, {}, {}) for plan in plan_tables(pg)}
            base.execute(f"drop table {STATE_TABLE}")
            base.commit()
        base.execute("checkpoint")
    except psycopg.Error as exc:
        raise WarehouseError(f"PostgreSQL at {describe(url)}: {scrubbed(first_line(exc), url)}") from None
    finally:
        base.close()
        pg.close()
    return rows


class _CopiedReader(Reader):
    """A Reader over a temporary copy of PostgreSQL, removed when the reader closes."""

    def __init__(self, settings: Settings, folder: Path, path: Path, location: str) -> None:
        self.folder = folder
        super().__init__(settings, "database", path=path, location=location)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.folder, ignore_errors=True)


def open_postgres_reader(settings: Settings) -> Reader:
    """A Reader computing every model from a fresh copy of the PostgreSQL store (ATTRIBUTION_DATABASE_URL)."""
    assert settings.attribution_database_url is not None
    url = settings.attribution_database_url.get_secret_value()
    folder = Path(tempfile.mkdtemp(prefix="attribution-database-"))
    path = folder / "postgres.duckdb"
    try:
        copy_postgres(url, path)
        return _CopiedReader(settings, folder, path, f"postgresql://{describe(url)}")
    except WarehouseError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ReaderUnavailable(str(exc)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
