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

Tables are brought over by policy (ingest/reconcile/postgres_tables.py): rows of a key replace it, append-only
rows are appended, a system's records are copied whole when re-pulled, the few-row rest whole each round.

Atomicity. A round applies what it read and the new snapshot to the base in one DuckDB transaction (interrupted,
neither moves), then publishes: the checkpointed base file is copied beside the replica, its warehouse_state
dropped, `replica_info` written, the models materialised, and the copy `os.replace`d over the replica, so a
reader opens the previous copy or the new one, never a torn one. A round that read nothing publishes nothing. The
first round, and one after the database or its schema changed (or `--full`), copies everything.

`report --source database` on PostgreSQL is a full copy into a temporary file, with the models computed there
(`postgres_tables.open_postgres_reader`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import duckdb
import psycopg

from ingest.core.clock import utcnow
from ingest.reconcile.models import ModelParams
from ingest.reconcile.postgres_tables import (
    CHUNK_BYTES,
    STATE_TABLE,
    Snapshot,
    TableLoader,
    WarehouseError,
    WarehouseStopped,
    connect_postgres,
    create_tables,
    plan_tables,
    pull_versions,
    take_snapshot,
)
from ingest.reconcile.replica import (
    INFO_TABLE,
    ReplicaSnapshot,
    finish_copy,
    remove_abandoned_copies,
    remove_copy,
    schema_version,
    temp_path,
    write_replica_info,
)
from ingest.store.postgres import describe
from ingest.store.transfer import first_line, scrubbed

__all__ = ["RoundResult", "Warehouse", "WarehouseError", "WarehouseStopped", "base_path_for"]

log = logging.getLogger(__name__)

BASE_SUFFIX = ".warehouse"
# Copied like the rest, but a change to them alone is no reason to publish: no model or page reads them (/readyz
# writes the heartbeat; the alert monitors write the alert queue, the warehouse too when it evaluates a copy).
_NOT_ANALYTICS = frozenset({"service_heartbeat", "alert_states", "alerts"})


def base_path_for(replica: Path) -> Path:
    """The warehouse's own DuckDB file beside the replica it publishes."""
    return replica.with_name(replica.name + BASE_SUFFIX)


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
                take_snapshot(pg, self.url)
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
                now = take_snapshot(pg, self.url)
                previous = _read_state(base)
                full = full or not _continues(previous, now)
                plans = plan_tables(pg)
                base.begin()
                if full:
                    create_tables(base)
                pulls = pull_versions(pg, {plan.name for plan in plans})
                rows: dict[str, int] = {}
                with tempfile.TemporaryDirectory(prefix="attribution-warehouse-") as folder:
                    loader = TableLoader(pg, base, Path(folder), self._stopping, self.chunk_bytes)
                    since = None if full or previous is None else previous.snapshot
                    before = {} if previous is None else previous.pulls
                    for plan in plans:
                        rows[plan.name] = loader.load(plan, since, before, pulls)
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
                metrics = finish_copy(copy, self.params)
            finally:
                # Untracked before it is closed: stop() never interrupts a closed connection.
                self._track(None)
                copy.close()
        except BaseException:
            remove_copy(temp)
            raise
        os.replace(temp, self.replica)
        snapshot = ReplicaSnapshot(
            self.replica, state.taken_at, time.perf_counter() - started, self.replica.stat().st_size, metrics
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
