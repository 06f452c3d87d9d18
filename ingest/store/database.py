"""The operational store: the embedded DuckDB file (opening it, versioned migrations, the one writer that owns it)
and what both engines offer."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import duckdb

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.store.writer import StoreUnavailable, Writer

log = logging.getLogger(__name__)

T = TypeVar("T")
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class DatabaseLocked(Exception):
    """Another process holds the database file open for writing."""


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the database file, creating its folder; explain a lock held by another process or a file that can't be
    opened (StoreUnavailable: a folder or file that is read-only, a full disk)."""
    try:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DatabaseLocked(
                f"{path} is open in another process (DuckDB allows one writer); stop it, or go through "
                "the running API's admin endpoints"
            ) from exc
        raise StoreUnavailable(f"cannot open {path}: {_first_line(exc)}") from exc
    except (OSError, duckdb.PermissionException) as exc:
        raise StoreUnavailable(f"cannot open {path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def available_migrations(engine: str = "duckdb") -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped for an engine, in order: DuckDB's in
    ingest/store/migrations, PostgreSQL's (the same changes in its dialect) in ingest/store/migrations/postgresql."""
    folder = resources.files("ingest.store.migrations")
    found = []
    for entry in (folder if engine == "duckdb" else folder / engine).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    conn.execute(
        "create table if not exists schema_migrations ("
        "version integer primary key, name varchar not null, applied_at timestamp not null)"
    )
    done = {row[0] for row in conn.execute("select version from schema_migrations").fetchall()}
    applied = []
    for version, name, sql in available_migrations():
        if version in done:
            continue
        conn.begin()
        try:
            conn.execute(sql)
            conn.execute("insert into schema_migrations values (?, ?, ?)", [version, name, utcnow()])
            conn.commit()
        except duckdb.Error:
            conn.rollback()
            raise
        log.info("migration applied", extra={"migration": name})
        applied.append(name)
    return applied


class Database:
    """The operational store of an API process: the writer that commits grouped units of work, and reads.

    Two engines: the embedded DuckDB file (`EmbeddedDatabase`, the default) and a PostgreSQL server
    (`postgres.PostgresDatabase`, which any number of instances share). Repositories take the connection a handler
    or a read is given; on PostgreSQL it speaks the same few methods as DuckDB's.
    """

    engine: ClassVar[str]
    writer: Writer

    @staticmethod
    def open(path: Path) -> EmbeddedDatabase:
        """Open the embedded file, apply migrations and start the writer."""
        return EmbeddedDatabase.open_file(path)

    @property
    def location(self) -> str:
        """Where the store is, as it may be shown (never a password)."""
        raise NotImplementedError

    def read(self, query: Callable[[Any], T]) -> T:
        """Run a read without joining the writer's transaction."""
        raise NotImplementedError

    def close(self) -> None:
        """Drain the writer and close the store."""
        raise NotImplementedError


class EmbeddedDatabase(Database):
    """The DuckDB file of the API process: its connection and its writer thread."""

    engine = "duckdb"

    def __init__(self, path: Path, conn: duckdb.DuckDBPyConnection, writer: Writer) -> None:
        self.path = path
        self.conn = conn
        self.writer = writer

    @classmethod
    def open_file(cls, path: Path) -> EmbeddedDatabase:
        """Open the file, apply migrations and start the writer."""
        conn = connect(path)
        migrate(conn)
        writer = Writer(conn)
        writer.start()
        return cls(path=path, conn=conn, writer=writer)

    @property
    def location(self) -> str:
        return str(self.path)

    def read(self, query: Callable[[Any], T]) -> T:
        """Run a read on its own cursor, so readers in other threads never share the writer's transaction."""
        cursor = self.conn.cursor()
        try:
            return query(cursor)
        finally:
            cursor.close()

    def close(self) -> None:
        """Drain the writer, checkpoint and close the file.

        A checkpoint that fails (a read-only folder, a full disk) loses nothing: what was committed is in the
        write-ahead log, which the next open replays. So the stop still ends cleanly, with a warning.
        """
        self.writer.stop()
        try:
            self.conn.execute("checkpoint")
        except duckdb.Error as exc:
            log.warning(
                "checkpoint failed at shutdown; the write-ahead log keeps every committed write",
                extra={"error": _first_line(exc)},
            )
        finally:
            self.conn.close()


def open_database(settings: Settings) -> Database:
    """The store the settings name: PostgreSQL when ATTRIBUTION_DATABASE_URL is set, else the embedded file."""
    if settings.attribution_database_url is not None:
        from ingest.store.postgres import PostgresDatabase  # imports psycopg's pool only where it is used

        return PostgresDatabase.connect(settings.attribution_database_url.get_secret_value())
    return Database.open(settings.attribution_db_path)
