"""The PostgreSQL operational store: connections that speak the DuckDB connection's few methods, a read pool, and
versioned migrations any number of instances may run at the same moment.

psycopg 3 rather than asyncpg: our store is synchronous by design (one writer thread runs the batch handlers, reads
run in worker threads), and psycopg is synchronous natively with a thread-safe pool; asyncpg would need an event
loop of its own in every thread. Measured on our hot path (bench/pg_driver.py, 32 callers, grouped commits through
`unnest` arrays): psycopg 4,600 leads/s at 0.15 ms client CPU per lead, asyncpg 4,853 at 0.07 ms; both far beyond
what the API around them spends per lead (README "PostgreSQL").
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
from psycopg.types.string import TextLoader

from ingest.core.clock import utcnow
from ingest.store.database import Database, available_migrations
from ingest.store.writer import StoreUnavailable, Writer

log = logging.getLogger(__name__)

T = TypeVar("T")

# The advisory lock every instance takes to migrate: the first applies what is missing, the others wait for it and
# then find nothing left to do. Any constant works as long as every instance uses the same.
MIGRATION_LOCK_KEY = 0x61747472  # "attr"
CONNECT_TIMEOUT_SECONDS = 10
# How long a read waits for a free pooled connection before the request is answered 503 (pool exhausted).
POOL_WAIT_SECONDS = 5.0
POOL_SIZE = 8

Params = Sequence[Any] | None


def describe(url: str) -> str:
    """A URL as it may be shown and logged: host, port and database, never the user's password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """DuckDB's `?` placeholders as psycopg's `%s` (and a literal `%` doubled), outside quotes and comments."""
    out: list[str] = []
    quote: str | None = None
    index = 0
    while index < len(sql):
        char = sql[index]
        if quote is not None:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif sql.startswith("--", index):
            end = sql.find("\n", index)
            end = len(sql) if end < 0 else end
            out.append(sql[index:end].replace("%", "%%"))
            index = end
            continue
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _configure(raw: psycopg.Connection[Any]) -> None:
    """Every connection: JSON comes back as text (as from DuckDB) and timestamps are read and written as UTC."""
    for name in ("json", "jsonb"):
        raw.adapters.register_loader(name, TextLoader)
    raw.execute("set time zone 'UTC'")
    if not raw.autocommit:
        raw.commit()


def _open(url: str, *, autocommit: bool) -> psycopg.Connection[Any]:
    try:
        raw = psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {describe(url)}: {_first_line(exc)}"
        ) from exc
    _configure(raw)
    return raw


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _ColumnTypes:
    """Each table's column types as SQL names (`uuid`, `timestamp without time zone`...), read once per process:
    a bulk insert casts its array parameters to them."""

    def __init__(self) -> None:
        self._types: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def of(self, raw: psycopg.Connection[Any], table: str) -> dict[str, str]:
        with self._lock:
            if table not in self._types:
                rows = raw.execute(
                    "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
                    "where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped",
                    [table],
                ).fetchall()
                self._types[table] = {name: kind for name, kind in rows}
            return self._types[table]


class PgConnection:
    """A psycopg connection behind the methods of a DuckDB connection our repositories use, so their SQL is written
    once (`?` placeholders; dialect splits ask `is_postgres`)."""

    dialect = "postgresql"

    def __init__(
        self, raw: psycopg.Connection[Any], types: _ColumnTypes, reopen: Callable[[], Any] | None = None
    ):
        self.raw = raw
        self._types = types
        self._reopen = reopen
        self._cursor: psycopg.Cursor[Any] | None = None

    def execute(self, sql: str, params: Params = None) -> PgConnection:
        self._cursor = self.raw.execute(to_pyformat(sql) if params else sql, list(params) if params else None)
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> PgConnection:
        cursor = self.raw.cursor()
        cursor.executemany(to_pyformat(sql), [list(row) for row in params])
        self._cursor = cursor
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        assert self._cursor is not None
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        assert self._cursor is not None
        return self._cursor.fetchall()

    @property
    def description(self) -> list[tuple[Any, ...]]:
        assert self._cursor is not None and self._cursor.description is not None
        return [(column.name, column.type_code) for column in self._cursor.description]

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount if self._cursor is not None else -1

    def column_types(self, table: str) -> dict[str, str]:
        """The SQL type of each column of `table`."""
        return self._types.of(self.raw, table)

    def begin(self) -> None:
        """Open a transaction (psycopg opens it with the first statement); reconnect first if the server went away."""
        if (self.raw.closed or self.raw.broken) and self._reopen is not None:
            self.raw = self._reopen()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        if not self.raw.closed:
            self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def is_postgres(conn: object) -> bool:
    """Whether a repository's connection is PostgreSQL's (the one question a dialect split asks)."""
    return isinstance(conn, PgConnection)


class PostgresDatabase(Database):
    """The operational store on a PostgreSQL server: one writer connection committing grouped units of work, and a
    pool of connections for reads; any number of instances may share the database."""

    engine = "postgresql"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, pool_wait: float = POOL_WAIT_SECONDS) -> None:
        self.url = url
        self._types = _ColumnTypes()
        writer_conn = PgConnection(
            _open(url, autocommit=False), self._types, lambda: _open(url, autocommit=False)
        )
        self.writer = Writer(writer_conn, name="postgres-writer")
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            configure=_configure,
            timeout=pool_wait,
            open=False,
            name="attribution-reads",
        )

    @classmethod
    def connect(cls, url: str, **pool: Any) -> PostgresDatabase:
        """Open the store (the schema must be migrated: `attribution db migrate`) and start its writer; `pool`:
        `pool_size`, `pool_wait`."""
        database = cls(url, **pool)
        try:
            database._check_schema()
            database._pool.open(wait=False)
        except BaseException:
            database.writer.close_connection()
            raise
        database.writer.start()
        return database

    def _check_schema(self) -> None:
        def applied(conn: PgConnection) -> int:
            row = conn.execute("select to_regclass('schema_migrations') is not null").fetchone()
            if not row or not row[0]:
                return 0
            row = conn.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()
            return int(row[0]) if row else 0

        shipped = max(version for version, _, _ in available_migrations("postgresql"))
        if self.read(applied) < shipped:
            raise StoreUnavailable(
                f"the PostgreSQL database at {describe(self.url)} is not migrated; run `attribution db migrate`"
            )

    @property
    def location(self) -> str:
        return f"postgresql://{describe(self.url)}"

    @contextmanager
    def _pooled(self) -> Iterator[PgConnection]:
        if self._pool.closed:  # before start-up opened it (checking the schema): a connection of its own
            raw = _open(self.url, autocommit=True)
            try:
                yield PgConnection(raw, self._types)
            finally:
                raw.close()
            return
        try:
            with self._pool.connection() as raw:
                yield PgConnection(raw, self._types)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable("every PostgreSQL connection is busy; try again shortly") from exc

    def read(self, query: Callable[[Any], T]) -> T:
        """Run a read on a pooled connection (autocommit: it holds no transaction open).

        After the server restarted, each pooled connection is found dead once, by the read that uses it (the pool
        then drops it): a read holds nothing, so it is run once more on another before the caller hears of it.
        """
        for attempt in (1, 2):
            try:
                with self._pooled() as conn:
                    return query(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise StoreUnavailable(
                        f"PostgreSQL cannot answer now ({_first_line(exc)}); try again shortly"
                    ) from exc
        raise AssertionError("unreachable")

    def pool_stats(self) -> dict[str, int]:
        """The read pool's figures as psycopg_pool counts them (`pool_size`, `pool_available`, `pool_max`,
        `requests_waiting`, ...); the Prometheus pool gauges read them."""
        return self._pool.get_stats()

    @property
    def pool_closed(self) -> bool:
        """Whether the read pool is closed (before start-up, or after close())."""
        return self._pool.closed

    def close(self) -> None:
        """Drain the writer, then close its connection and the pool."""
        self.writer.stop()
        self.writer.close_connection()
        self._pool.close()


def check_store(url: str) -> str:
    """Connect once and check the schema is migrated (StoreUnavailable saying why not); return where it is."""
    database = PostgresDatabase(url)
    try:
        database._check_schema()
    finally:
        database.writer.close_connection()
    return database.location


def migrate(url: str) -> list[str]:
    """Apply the PostgreSQL migrations not yet applied, each in its own transaction; return their names."""
    raw = _open(url, autocommit=True)
    applied: list[str] = []
    try:
        raw.execute("select pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            raw.execute(
                "create table if not exists schema_migrations ("
                "version integer primary key, name text not null, applied_at timestamp not null)"
            )
            done = {row[0] for row in raw.execute("select version from schema_migrations").fetchall()}
            for version, name, sql in available_migrations("postgresql"):
                if version in done:
                    continue
                with raw.transaction():
                    raw.execute(sql)
                    raw.execute(
                        "insert into schema_migrations values (%s, %s, %s)", [version, name, utcnow()]
                    )
                log.info("migration applied", extra={"migration": name, "engine": "postgresql"})
                applied.append(name)
        finally:
            raw.execute("select pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    finally:
        raw.close()
    return applied
