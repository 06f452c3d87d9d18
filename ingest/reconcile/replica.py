"""The read replica: a consistent copy of the database the API publishes atomically, and the reader over it.

DuckDB lets one process open a file for writing, and then no other process can open it at all. So the API process
(the one writer) publishes a copy every ATTRIBUTION_REPLICA_SECONDS to ATTRIBUTION_REPLICA_PATH, and the dashboard,
notebooks and `attribution report` read that copy.

How a copy is made: on its own cursor of the API's connection, in one read transaction (so every table comes from
the same committed snapshot, and the writer is never paused: DuckDB readers do not block writers), the publisher
attaches a new file beside the replica and creates each table there from the live one, adds `replica_info` (when
the snapshot was taken, and the configuration the metrics depend on), checkpoints and detaches it, then
opens the copy on a connection of its own to compute the heavy SQL models into it as tables
(`ingest.reconcile.models.materialise_models`: readers then query results instead of re-reading every row), and
`os.replace`s it over the replica. A reader therefore opens either the previous copy or the new one, never a
half-written file; one that already has the old copy open keeps reading it until it refreshes.

What it costs: the copy is a full one (CPU for re-compressing every table, then one pass of the models; see
bench/report.py for figures), so the next copy starts `interval` after the previous one finished, or as long
after as the previous one took when that is longer: on a large database the publisher works at most half the
time and leaves the rest of the CPU to ingest (the replica is then about two copy-times old at worst). A copy is
skipped while nothing was committed. The gap also matters to the writer: DuckDB does not checkpoint automatically while another
transaction is open, so the publisher must not hold one continuously.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

import duckdb

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.models import (
    MATERIALISED,
    PARAM_COLUMNS,
    Metric,
    ModelError,
    ModelParams,
    discover_models,
    load_models,
    materialise_models,
    success_metrics,
)
from ingest.store.database import Database, DatabaseLocked, EmbeddedDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")

INFO_TABLE = "replica_info"
_OUT = "_replica_out"  # alias of the copy being written, in the API's database instance
_SOURCE = "src"  # alias of the attached file in a reader's in-memory database
_OPEN_ATTEMPTS = 5
Source = Literal["auto", "replica", "database"]


class ReaderUnavailable(Exception):
    """Nothing to read: no replica has been published and the database cannot be opened."""


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One published copy: where, of what moment, what it cost, and its success metrics (computed on the copy as
    it was published, so the alert monitor compares them with the targets without opening the file again)."""

    path: Path
    taken_at: datetime
    seconds: float
    size_bytes: int
    metrics: tuple[Metric, ...] = ()


def finish_copy(copy: duckdb.DuckDBPyConnection, params: ModelParams) -> tuple[Metric, ...]:
    """On a writable connection to a new copy: the models materialised, the success metrics read from them (empty
    when they cannot be computed: the copy is still published, the targets are evaluated at the next one), and the
    file checkpointed."""
    materialise_models(copy, params)
    try:
        metrics = tuple(success_metrics(copy))
    except ModelError as exc:
        log.warning("success metrics not computed on the copy", extra={"error": str(exc)})
        metrics = ()
    copy.execute("checkpoint")
    return metrics


# --- SQL of the publisher (table names come from the live catalog, never from input) ------------------------


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(path: Path) -> str:
    # ATTACH takes no parameters; the path is configuration, quoted as an SQL string literal.
    return "'" + str(path).replace("'", "''") + "'"


def _live_tables(cursor: duckdb.DuckDBPyConnection) -> tuple[str, list[str]]:
    row = cursor.execute("select current_database()").fetchone()
    database = str(row[0]) if row else ""
    tables = cursor.execute(
        "select table_name from duckdb_tables() "
        "where database_name = current_database() and schema_name = 'main' and not temporary "
        "order by table_name"
    ).fetchall()
    return database, [str(name) for (name,) in tables]


def schema_version(cursor: duckdb.DuckDBPyConnection) -> int:
    """The latest migration applied to the database `cursor` reads (0: none)."""
    row = cursor.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()
    return int(row[0]) if row else 0


def _copy_snapshot(cursor: duckdb.DuckDBPyConnection, params: ModelParams, taken_at: datetime) -> None:
    """Inside the open transaction: every live table into the attached copy, then replica_info."""
    database, tables = _live_tables(cursor)
    for table in tables:
        cursor.execute(
            f"create table {_OUT}.{_quoted(table)} as select * from {_quoted(database)}.main.{_quoted(table)}"  # noqa: S608
        )
    write_replica_info(cursor, f"{_OUT}.{INFO_TABLE}", taken_at, schema_version(cursor), params)


def write_replica_info(
    conn: duckdb.DuckDBPyConnection, table: str, taken_at: datetime, schema_version: int, params: ModelParams
) -> None:
    """Create the one-row table (INFO_TABLE, or its name qualified by the copy's alias) that says what a copy
    holds: when its snapshot was taken, and the configuration the metrics are read under."""
    columns = ", ".join(f"{name} boolean" for name in PARAM_COLUMNS)
    conn.execute(
        f"create table {table} (taken_at timestamp, published_at timestamp, schema_version integer, {columns})"
    )
    placeholders = ", ".join("?" for _ in PARAM_COLUMNS)
    conn.execute(
        f"insert into {table} values (?, ?, ?, {placeholders})",  # noqa: S608 - constants
        [taken_at, utcnow(), schema_version, *params.values()],
    )


def temp_path(final: Path) -> Path:
    """Where a copy of `final` is written before it replaces it (named for this process and thread)."""
    return final.with_name(f"{final.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, under another user
    return True


def remove_abandoned_copies(final: Path) -> None:
    """Delete half-written copies left by processes that died mid-copy (not those of live ones)."""
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        pid = stale.name.removeprefix(f"{final.name}.tmp-").split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        stale.unlink(missing_ok=True)


def remove_copy(path: Path) -> None:
    """Delete a DuckDB file and its write-ahead log."""
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)


def _no_tracking(_conn: duckdb.DuckDBPyConnection | None) -> None:
    pass


def publish_replica(
    database: EmbeddedDatabase,
    path: Path,
    params: ModelParams,
    *,
    track: Callable[[duckdb.DuckDBPyConnection | None], None] = _no_tracking,
) -> ReplicaSnapshot:
    """Copy the committed state of `database` to `path` atomically, with the heavy models materialised; return
    what was published.

    `track` is told each connection as the work moves to it (None when done), so another thread can interrupt a
    long copy; it may raise to abandon the copy.
    """
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    remove_copy(temp)
    cursor = database.conn.cursor()
    try:
        track(cursor)
        taken_at = _copy_tables(cursor, temp, params)
        copy = duckdb.connect(str(temp))
        try:
            track(copy)
            metrics = finish_copy(copy, params)
        finally:
            # Untracked before it is closed: stop() must never interrupt a connection that is already closed.
            track(None)
            copy.close()
    except BaseException:
        remove_copy(temp)
        raise
    finally:
        track(None)
        cursor.close()
    os.replace(temp, path)
    snapshot = ReplicaSnapshot(path, taken_at, time.perf_counter() - started, path.stat().st_size, metrics)
    log.info(
        "replica published",
        extra={"replica": str(path), "seconds": round(snapshot.seconds, 3), "bytes": snapshot.size_bytes},
    )
    return snapshot


def _copy_tables(cursor: duckdb.DuckDBPyConnection, temp: Path, params: ModelParams) -> datetime:
    """Every live table into a new file at `temp`, from one snapshot; return when the snapshot was taken."""
    try:
        cursor.execute(f"detach database if exists {_OUT}")  # left attached by a copy that was interrupted
        cursor.execute(f"attach {_literal(temp)} as {_OUT}")
        # Taken before the transaction opens: the snapshot holds at least everything committed by then.
        taken_at = utcnow()
        cursor.begin()
        _copy_snapshot(cursor, params, taken_at)
        cursor.commit()
        cursor.execute(f"checkpoint {_OUT}")
        cursor.execute(f"detach {_OUT}")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.rollback()
        with contextlib.suppress(duckdb.Error):
            cursor.execute(f"detach database if exists {_OUT}")
        raise
    return taken_at


class _Stopping(Exception):
    """The publisher is stopping: abandon the copy in progress."""


class ReplicaPublisher:
    """Publishes the replica from a background thread of the API process, `interval` apart."""

    def __init__(self, database: EmbeddedDatabase, settings: Settings) -> None:
        self.database = database
        self.path = settings.attribution_replica_path
        self.interval = settings.attribution_replica_seconds
        self.params = ModelParams.from_settings(settings)
        self.last: ReplicaSnapshot | None = None
        self.publishes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._working: duckdb.DuckDBPyConnection | None = None  # the connection the copy runs on
        self._lock = threading.Lock()
        self._published_batches = -1
        # Told each published copy, on the publisher thread (the alert monitor evaluates the targets on it).
        self.on_published: Callable[[ReplicaSnapshot], object] | None = None

    def start(self) -> None:
        """Start publishing: one copy now, then one per interval while anything is committed."""
        if self._thread is None:
            remove_abandoned_copies(self.path)
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="replica-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop publishing; a copy in progress is interrupted and its file removed."""
        if self._thread is None:
            return
        with self._lock:
            self._stop.set()
            if self._working is not None:
                self._working.interrupt()
        self._thread.join()
        self._thread = None

    def publish_now(self) -> ReplicaSnapshot:
        """Publish one copy in the calling thread."""
        batches = self.database.writer.batches_committed
        snapshot = publish_replica(self.database, self.path, self.params, track=self._track)
        self.last = snapshot
        self.publishes += 1
        self._published_batches = batches
        if self.on_published is not None:
            self.on_published(snapshot)
        return snapshot

    def _track(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        with self._lock:
            if conn is not None and self._stop.is_set():
                raise _Stopping
            self._working = conn

    def _due(self) -> bool:
        return self.database.writer.batches_committed != self._published_batches or not self.path.exists()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._due():
                try:
                    self.publish_now()
                except (duckdb.Error, OSError, _Stopping) as exc:
                    if self._stop.is_set():
                        break  # interrupted by stop()
                    self.failures += 1
                    log.error("replica publish failed", extra={"replica": str(self.path), "error": repr(exc)})
            self._stop.wait(self.pause_seconds())

    def pause_seconds(self) -> float:
        """How long to wait before the next copy: the interval, or the last copy's duration if longer."""
        return max(self.interval, self.last.seconds if self.last is not None else 0.0)


# --- readers --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica records about itself."""

    taken_at: datetime
    published_at: datetime
    schema_version: int
    params: ModelParams


def file_identity(path: Path) -> tuple[int, int] | None:
    """Which copy is at `path` (inode and modification time; None: nothing there): a new publish changes it."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns


class Reader:
    """An in-memory DuckDB connection with the replica (or the idle database) attached read-only and the SQL
    models created as views over it (except those the replica holds materialised, read as its tables).

    Use `conn` from one thread; other threads take `cursor()`. `refresh()` re-attaches a newer replica (do not call
    it while another thread is querying); the views stay, as they are bound again at each query.
    """

    def __init__(
        self,
        settings: Settings,
        source: Literal["replica", "database"],
        *,
        path: Path | None = None,
        location: str | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        default = settings.attribution_replica_path if source == "replica" else settings.attribution_db_path
        self.path = path or default
        # What the numbers were read from, as it may be shown: the file, or the PostgreSQL database it was copied from.
        self.location = location or str(self.path)
        self.conn = duckdb.connect()
        self.info: ReplicaInfo | None = None
        self._identity: tuple[int, int] | None = None
        self.materialised: frozenset[str] = frozenset()
        try:
            self._attach()
        except BaseException:
            self.conn.close()
            raise

    @property
    def params(self) -> ModelParams:
        """The configuration the metrics are read under: the publishing API's, else this process's."""
        return self.info.params if self.info is not None else ModelParams.from_settings(self.settings)

    @property
    def taken_at(self) -> datetime | None:
        """When the replica's snapshot was taken (None: reading the live database)."""
        return self.info.taken_at if self.info is not None else None

    def staleness_seconds(self) -> float:
        """How old the data is: now minus taken_at (0 when reading the live database)."""
        return 0.0 if self.taken_at is None else (utcnow() - self.taken_at).total_seconds()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for another thread, resolving table names like `conn` does."""
        cursor = self.conn.cursor()
        cursor.execute(f"set search_path = 'memory.main,{_SOURCE}.main'")
        return cursor

    def refresh(self) -> bool:
        """Re-attach the replica if a newer copy was published since; return whether it changed.

        A replica that vanished (deleted by hand) keeps the copy already attached.
        """
        identity = file_identity(self.path) if self.source == "replica" else None
        if identity is None or identity == self._identity:
            return False
        self.conn.execute(f"detach database if exists {_SOURCE}")
        self._attach()
        return True

    def close(self) -> None:
        """Close the connection (and with it the attached file)."""
        self.conn.close()

    def _attach(self) -> None:
        for attempt in range(_OPEN_ATTEMPTS):
            identity = file_identity(self.path)
            if identity is None:
                raise ReaderUnavailable(f"nothing at {self.path}")
            try:
                self.conn.execute(f"attach {_literal(self.path)} as {_SOURCE} (read_only)")
            except duckdb.ResourceInUseException as exc:  # this very process holds it (an API in a thread)
                raise DatabaseLocked(f"{self.path} is open for writing in this process") from exc
            except duckdb.IOException as exc:
                if "lock" in str(exc).lower():
                    raise DatabaseLocked(f"{self.path} is open for writing in another process") from exc
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))  # replaced while we opened it: try the new one
                continue
            self._identity = identity
            break
        self.conn.execute(f"set search_path = 'memory.main,{_SOURCE}.main'")
        self.info = self._read_info() if self.source == "replica" else None
        self._load_models()

    def _load_models(self) -> None:
        """Views for the models the attached file does not hold as tables (a view of the same name would hide
        the table, so one left from a previous copy is dropped)."""
        rows = self.conn.execute(
            "select table_name from duckdb_tables() where database_name = ? and schema_name = 'main'",
            [_SOURCE],
        ).fetchall()
        held = (
            frozenset(str(name) for (name,) in rows) & MATERIALISED
            if self.source == "replica"
            else frozenset()
        )
        for name in held - self.materialised:
            self.conn.execute(f"drop view if exists memory.main.{name}")  # a name from MATERIALISED
        models = [model for model in discover_models() if model.name not in held]
        load_models(self.conn, self.params, temporary=False, models=models)
        self.materialised = held

    def _read_info(self) -> ReplicaInfo:
        columns = ", ".join(PARAM_COLUMNS)
        row = self.conn.execute(
            f"select taken_at, published_at, schema_version, {columns} from {_SOURCE}.main.{INFO_TABLE}"  # noqa: S608
        ).fetchone()
        if row is None:
            raise ReaderUnavailable(f"{self.path} has no {INFO_TABLE}: not a published replica")
        return ReplicaInfo(
            taken_at=row[0],
            published_at=row[1],
            schema_version=int(row[2]),
            params=ModelParams(*(bool(value) for value in row[3:])),
        )


def open_reader(settings: Settings, source: Source = "auto") -> Reader:
    """A Reader over the replica or the database.

    "auto" reads the database itself when no process holds it (freshest), else the replica. A long-lived reader
    (the dashboard) should ask for "replica": holding the database open, even read-only, stops the API starting.
    On PostgreSQL (ATTRIBUTION_DATABASE_URL set) "database" copies the operational store into a temporary DuckDB
    file and computes every model there (`ingest.reconcile.warehouse.open_postgres_reader`), and "auto" reads the
    replica `attribution warehouse` keeps, or the database when there is none yet: any number of API processes may
    hold PostgreSQL, so holding it says nothing, and a fresh copy of a large store costs far more than the replica.
    """
    if settings.attribution_database_url is not None:
        return _open_postgres(settings, source)
    if source == "database":
        return _open_database(settings)
    if source == "replica":
        return Reader(settings, "replica")
    try:
        return _open_database(settings)
    except (DatabaseLocked, ReaderUnavailable) as exc:
        try:
            return Reader(settings, "replica")
        except ReaderUnavailable:
            raise ReaderUnavailable(
                f"{exc}; and no replica at {settings.attribution_replica_path} yet "
                "(the API publishes one every ATTRIBUTION_REPLICA_SECONDS)"
            ) from None


def _open_postgres(settings: Settings, source: Source) -> Reader:
    # Imported here: the warehouse builds on this module's publishing pieces.
    from ingest.reconcile.postgres_tables import open_postgres_reader

    if source == "replica" or (source == "auto" and settings.attribution_replica_path.exists()):
        return Reader(settings, "replica")
    return open_postgres_reader(settings)


def _open_database(settings: Settings) -> Reader:
    if not settings.attribution_db_path.exists():
        raise ReaderUnavailable(f"no database at {settings.attribution_db_path}")
    return Reader(settings, "database")


@contextlib.contextmanager
def reading(settings: Settings, source: Source = "auto") -> Iterator[Reader]:
    """open_reader as a context manager that closes the reader."""
    reader = open_reader(settings, source)
    try:
        yield reader
    finally:
        reader.close()


def live_models(
    database: Database, settings: Settings, compute: Callable[[duckdb.DuckDBPyConnection], T]
) -> T:
    """`compute` over the SQL models of the store the API runs on (the admin endpoints' metrics, reconciliation
    and repair findings).

    The embedded file: temporary views on a fresh cursor of the API's own connection, gone when it closes (nothing
    is written to the file). PostgreSQL: the DuckDB models cannot run there, so they run where `attribution report`
    reads them: the replica `attribution warehouse` keeps, or before it first published, a fresh copy of the store.
    """
    if isinstance(database, EmbeddedDatabase):
        params = ModelParams.from_settings(settings)

        def on_views(cursor: duckdb.DuckDBPyConnection) -> T:
            load_models(cursor, params, temporary=True)
            return compute(cursor)

        return database.read(on_views)
    with reading(settings, "auto") as reader:
        return compute(reader.conn)
