"""The warehouse: on PostgreSQL, the DuckDB analytics replica kept current from the operational store, incrementally.

On the embedded store the API publishes the replica itself (ingest/reconcile/replica.py). On PostgreSQL any number
of API processes share the store and none owns a DuckDB file, so one `attribution warehouse` process does it: every
ATTRIBUTION_REPLICA_SECONDS it reads the rows written since its previous round, applies them to a DuckDB file of
its own (the base, `<replica>.warehouse`), and publishes a copy of that base with the heavy models materialised,
as the embedded publisher does: readers find the same tables, `replica_info` and models, and read it unchanged.

The watermark. The app stamps updated_at / recorded_at with its own clock when a transaction runs, not when it
commits; instances commit out of order, so a row can commit after rows with a later stamp were read, and
`updated_at > watermark` would miss it. What is needed is commit visibility, which PostgreSQL has: every writing
transaction has an id, and a snapshot says which ids had committed when it was taken. Migration 011 stamps each row
of the large tables with the id of the transaction that last wrote it (`change_xid`: a column default on insert,
a trigger on update; 64-bit, never wraps). A round opens one REPEATABLE READ snapshot S and reads the rows whose
change_xid is not visible in the previous round's snapshot P (kept in the base), through the index on
`change_xid >= xmin(P)` (every id below P's oldest running transaction was visible to P). A row written by a
transaction that was still running at P, however late it commits, is read as soon as a snapshot sees it, and one
P saw is never read twice: no time window to tune, no overlap to de-duplicate. S is then kept as the next P.
(A writing transaction left open for a long time widens the index range, not the rows read.)

Tables, by what the catalog says of them:
- changes: a primary key and change_xid (leads, deliveries, payments, stripe_events, unlinked_refunds, alerts):
  each row read replaces the base's row of the same key.
- appended: change_xid and no key (consent_ledger, delivery_attempts: append-only, never updated): rows read are
  appended.
- pulled: a system's records (ext_*) are only ever replaced whole, in one transaction with its ext_pulls row, so a
  table is copied whole when that row is a new version (its xmin changed), and left alone otherwise.
- whole: the rest (schema_migrations, ext_pulls, stripe_sync_cursor, alert_states, service_heartbeat, and any
  table without change_xid): a handful of rows, copied whole and compared each round.
No stamped table deletes rows (a deletion would not be seen); a table that must delete belongs to the last two.

Atomicity. A round applies what it read and the new snapshot to the base in one DuckDB transaction (interrupted,
neither moves), then publishes: the checkpointed base file is copied beside the replica, its warehouse_state
dropped, `replica_info` written, the models materialised, and the copy `os.replace`d over the replica, so a
reader opens the previous copy or the new one, never a torn one. A round that read nothing publishes nothing. The
first round, and one after the database or its schema changed (or `--full`), copies everything.

Transfer: `COPY (select ...) TO STDOUT (format csv)` streamed into DuckDB's CSV reader in files of whole rows
(CHUNK_BYTES each), typed by the DuckDB schema, so no row becomes a Python object. `report --source database` on
PostgreSQL is the same full copy into a temporary file, with the models computed there (`open_postgres_reader`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import duckdb
import psycopg
from psycopg import sql

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.models import ModelParams, materialise_models
from ingest.reconcile.replica import (
    INFO_TABLE,
    Reader,
    ReaderUnavailable,
    ReplicaSnapshot,
    remove_abandoned_copies,
    remove_copy,
    schema_version,
    temp_path,
    write_replica_info,
)
from ingest.reconcile.repository import RECORD_TABLES
from ingest.store.database import available_migrations, migrate
from ingest.store.postgres import describe
from ingest.store.transfer import CHANGE_COLUMN, first_line, scrubbed

log = logging.getLogger(__name__)

STATE_TABLE = "warehouse_state"
BASE_SUFFIX = ".warehouse"
CHUNK_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10
APPLICATION_NAME = "attribution-warehouse"  # how its sessions show in pg_stat_activity
# Copied like the rest, but a change to it alone is no reason to publish: /readyz writes it, no model reads it.
_NOT_ANALYTICS = frozenset({"service_heartbeat"})
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
    """The warehouse cannot do its round; the message says why in one line (never with the URL's password)."""


class WarehouseStopped(Exception):
    """stop() was asked for: the round in progress was abandoned, the base and the replica are as they were."""


def base_path_for(replica: Path) -> Path:
    """The warehouse's own DuckDB file beside the replica it publishes."""
    return replica.with_name(replica.name + BASE_SUFFIX)


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


def _take_snapshot(pg: psycopg.Connection[Any], url: str) -> Snapshot:
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
    columns: dict[str, set[str]] = {}
    for table, column in pg.execute(
        "select c.relname, a.attname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "join pg_attribute a on a.attrelid = c.oid "
        "where n.nspname = 'public' and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped"
    ).fetchall():
        columns.setdefault(str(table), set()).add(str(column))
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


def _pull_versions(pg: psycopg.Connection[Any], tables: set[str]) -> dict[str, str]:
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


def _create_tables(base: duckdb.DuckDBPyConnection) -> None:
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


@dataclass(frozen=True)
class _State:
    source: str
    schema_version: int
    snapshot: str
    taken_at: datetime
    published: bool
    pulls: dict[str, str]


def _read_state(base: duckdb.DuckDBPyConnection) -> _State | None:
    present = base.execute(
        "select count(*) from duckdb_tables() where database_name = current_database() and table_name = ?",
        [STATE_TABLE],
    ).fetchone()
    if not present or not present[0]:
        return None
    row = base.execute(
        f"select source, schema_version, snapshot, taken_at, published, pulls from {STATE_TABLE}"  # noqa: S608
    ).fetchone()
    if row is None:
        return None
    return _State(str(row[0]), int(row[1]), str(row[2]), row[3], bool(row[4]), json.loads(row[5]))


def _write_state(base: duckdb.DuckDBPyConnection, state: _State) -> None:
    base.execute(f"delete from {STATE_TABLE}")  # noqa: S608 - a constant
    base.execute(
        f"insert into {STATE_TABLE} values (?, ?, ?, ?, ?, ?)",  # noqa: S608 - a constant
        [
            state.source,
            state.schema_version,
            state.snapshot,
            state.taken_at,
            state.published,
            json.dumps(state.pulls, sort_keys=True),
        ],
    )


@dataclass(frozen=True)
class RoundResult:
    """What one round did: rows read per table, whether it was a full copy, and the copy it published (if any)."""

    number: int
    full: bool
    taken_at: datetime
    rows: dict[str, int]
    read_seconds: float
    published: ReplicaSnapshot | None
    seconds: float

    @property
    def rows_read(self) -> int:
        """Rows brought over in this round, all tables together."""
        return sum(self.rows.values())

    def summary(self) -> str:
        """One line for the operator."""
        taken = self.taken_at.isoformat(sep=" ", timespec="seconds")
        if self.published is None:
            return f"round {self.number}: nothing changed to publish · snapshot {taken} UTC · {self.seconds:.2f} s"
        busiest = sorted(((n, t) for t, n in self.rows.items() if n), reverse=True)[:4]
        detail = ", ".join(f"{table} {count:,}" for count, table in busiest)
        read = f"full copy of {self.rows_read:,} rows" if self.full else f"{self.rows_read:,} changed rows"
        return (
            f"round {self.number}: {read} ({detail or 'none'}) in {self.read_seconds:.2f} s · replica published "
            f"in {self.published.seconds:.2f} s · snapshot {taken} UTC"
        )


def _lock(path: Path) -> IO[bytes]:
    """Hold the base's lock file for the life of the process: one warehouse per replica."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.with_name(path.name + ".lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WarehouseError(
            f"another `attribution warehouse` keeps the replica beside {path} (its lock is held); one is enough"
        ) from None
    return handle


class Warehouse:
    """Keeps `replica` current from the PostgreSQL database at `url`, one round at a time (see the module doc).

    `run_round` runs in one thread; `stop` may be called from another to abandon the round in progress.
    """

    def __init__(
        self, url: str, replica: Path, params: ModelParams, *, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        self.url = url
        self.replica = replica
        self.params = params
        self.chunk_bytes = chunk_bytes
        self.base = base_path_for(replica)
        self._lock = _lock(self.base)
        remove_abandoned_copies(replica)
        self.rounds = 0
        self.last: RoundResult | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._stopping = threading.Event()
        self._guard = threading.Lock()
        self._working: duckdb.DuckDBPyConnection | psycopg.Connection[Any] | None = None

    @property
    def location(self) -> str:
        """The database read, as it may be shown."""
        return f"postgresql://{describe(self.url)}"

    def check(self) -> None:
        """Reach PostgreSQL and check its schema now (WarehouseError saying what is wrong), before any round."""
        try:
            pg = self._connection()
            with pg.transaction():
                _take_snapshot(pg, self.url)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        """Close the PostgreSQL connection and let go of the lock."""
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        self._lock.close()

    def stop(self) -> None:
        """Abandon the round in progress (its work is rolled back or removed) and refuse further ones."""
        with self._guard:
            self._stopping.set()
            working = self._working
            if isinstance(working, duckdb.DuckDBPyConnection):
                working.interrupt()
            elif working is not None:
                with contextlib.suppress(psycopg.Error):
                    working.cancel_safe(timeout=5)

    def _track(self, conn: duckdb.DuckDBPyConnection | psycopg.Connection[Any] | None) -> None:
        with self._guard:
            if conn is not None and self._stopping.is_set():
                raise WarehouseStopped
            self._working = conn

    def run_round(self, *, full: bool = False) -> RoundResult:
        """Bring over what changed since the last round and publish the replica if anything did."""
        started = time.perf_counter()
        if self._stopping.is_set():
            raise WarehouseStopped
        self.rounds += 1
        try:
            state, rows, full_copy, meaningful = self._read_into_base(full)
            read_seconds = time.perf_counter() - started
            snapshot = None
            if meaningful or not state.published or not self.replica.exists():
                snapshot = self._publish(state)
                self._mark_published()
        except (psycopg.Error, duckdb.Error, OSError) as exc:
            if self._stopping.is_set():
                raise WarehouseStopped from None
            if isinstance(exc, psycopg.Error) and self._pg is not None:
                self._pg.close()
                self._pg = None  # reconnect next round
            raise self._error(exc) from None
        finally:
            self._track(None)
        result = RoundResult(
            self.rounds,
            full_copy,
            state.taken_at,
            rows,
            read_seconds,
            snapshot,
            time.perf_counter() - started,
        )
        self.last = result
        log.debug(  # the CLI prints the round's one line; this is for logs read at DEBUG
            "warehouse round",
            extra={
                "round": result.number,
                "rows": result.rows_read,
                "full": full_copy,
                "seconds": result.seconds,
            },
        )
        return result

    def _error(self, exc: BaseException) -> WarehouseError:
        if isinstance(exc, psycopg.OperationalError):
            return WarehouseError(
                f"PostgreSQL at {describe(self.url)} cannot answer now: {scrubbed(first_line(exc), self.url)}"
            )
        if isinstance(exc, psycopg.Error):
            return WarehouseError(
                f"PostgreSQL at {describe(self.url)}: {scrubbed(first_line(exc), self.url)}"
            )
        return WarehouseError(f"the warehouse's files beside {self.replica}: {first_line(exc)}")

    def _connection(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            self._pg = connect_postgres(self.url)
        return self._pg

    def _read_into_base(self, full: bool) -> tuple[_State, dict[str, int], bool, bool]:
        """One snapshot's changes into the base, with the snapshot, in one DuckDB transaction."""
        pg = self._connection()
        base = duckdb.connect(str(self.base))
        try:
            self._track(base)
            taken_at = utcnow()  # before the snapshot: it holds at least everything committed by then
            with pg.transaction():
                self._track(pg)
                now = _take_snapshot(pg, self.url)
                previous = _read_state(base)
                full = full or not _continues(previous, now)
                plans = plan_tables(pg)
                base.begin()
                if full:
                    _create_tables(base)
                pulls = _pull_versions(pg, {plan.name for plan in plans})
                rows: dict[str, int] = {}
                with tempfile.TemporaryDirectory(prefix="attribution-warehouse-") as folder:
                    loader = _Loader(pg, base, Path(folder), self._stopping, self.chunk_bytes)
                    for plan in plans:
                        since = None if full or previous is None else previous
                        rows[plan.name] = loader.load(plan, since, pulls)
                meaningful = full or any(
                    count for table, count in rows.items() if table not in _NOT_ANALYTICS
                )
                published = previous is not None and previous.published and not meaningful
                state = _State(now.source, now.schema_version, now.snapshot, taken_at, published, pulls)
                self._track(base)
                _write_state(base, state)
                base.commit()
            base.execute("checkpoint")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                base.rollback()
            raise
        finally:
            self._track(None)  # under the guard: stop() never interrupts a connection being closed
            base.close()
        return state, rows, full, meaningful

    def _publish(self, state: _State) -> ReplicaSnapshot:
        """A copy of the base with replica_info and the models, put in place of the replica atomically."""
        started = time.perf_counter()
        temp = temp_path(self.replica)
        remove_copy(temp)
        try:
            shutil.copyfile(self.base, temp)
            copy = duckdb.connect(str(temp))
            try:
                self._track(copy)
                copy.execute(f"drop table {STATE_TABLE}")
                write_replica_info(copy, INFO_TABLE, state.taken_at, schema_version(copy), self.params)
                materialise_models(copy, self.params)
                copy.execute("checkpoint")
            finally:
                # Untracked before it is closed: stop() never interrupts a closed connection.
                self._track(None)
                copy.close()
        except BaseException:
            remove_copy(temp)
            raise
        os.replace(temp, self.replica)
        snapshot = ReplicaSnapshot(
            self.replica, state.taken_at, time.perf_counter() - started, self.replica.stat().st_size
        )
        log.debug(
            "replica published",
            extra={
                "replica": str(self.replica),
                "seconds": round(snapshot.seconds, 3),
                "bytes": snapshot.size_bytes,
            },
        )
        return snapshot

    def _mark_published(self) -> None:
        base = duckdb.connect(str(self.base))
        try:
            base.execute(f"update {STATE_TABLE} set published = true")  # noqa: S608 - a constant
        finally:
            base.close()


def _continues(previous: _State | None, now: Snapshot) -> bool:
    """Whether the base holds this database at this schema up to an earlier snapshot of it (else: copy it all)."""
    if previous is None or previous.source != now.source or previous.schema_version != now.schema_version:
        return False
    # Transaction ids never go back in one database: if they did, it was restored or replaced.
    return int(previous.snapshot.split(":")[0]) <= now.xmin


class _Loader:
    """Brings tables of one PostgreSQL snapshot into a DuckDB connection, by policy."""

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

    def load(self, plan: TablePlan, previous: _State | None, pulls: dict[str, str]) -> int:
        """Rows brought over for one table (`previous` None: all of them, into an empty table)."""
        table = _quoted(plan.name)
        if previous is None:
            return self._copy(plan, plan.name)
        if plan.policy == "pulled":
            if pulls.get(plan.name) == previous.pulls.get(plan.name):
                return 0
            self.base.execute(f"delete from {table}")  # noqa: S608 - a name of our schema
            return self._copy(plan, plan.name)
        if plan.policy == "appended":
            return self._copy(plan, plan.name, _changed_since(previous.snapshot))
        self.base.execute(f"create or replace temp table {_DELTA} as select * from {table} limit 0")  # noqa: S608
        try:
            if plan.policy == "changes":
                count = self._copy(plan, _DELTA, _changed_since(previous.snapshot))
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


# --- `report --source database` on PostgreSQL ---------------------------------------------------------------------


def copy_postgres(url: str, path: Path) -> dict[str, int]:
    """Every table of the PostgreSQL database at `url`, from one snapshot, into a new DuckDB file at `path`; return
    the rows copied per table."""
    pg = connect_postgres(url)
    base = duckdb.connect(str(path))
    try:
        with pg.transaction():
            _take_snapshot(pg, url)
            base.begin()
            _create_tables(base)
            with tempfile.TemporaryDirectory(prefix="attribution-report-") as folder:
                loader = _Loader(pg, base, Path(folder), threading.Event())
                rows = {plan.name: loader.load(plan, None, {}) for plan in plan_tables(pg)}
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
