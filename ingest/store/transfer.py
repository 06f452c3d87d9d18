"""Moving rows between the engines: `attribution db copy`, an embedded deployment's whole history into an empty
PostgreSQL database, and what the warehouse (which moves them back into DuckDB) shares with it.

The copy is one PostgreSQL transaction. The target is checked empty (every table of its public schema holds no
row), migrated, then, inside the transaction, locked against writers and other copies and checked empty again (two
copies started at once: the second waits, then finds rows and is refused). Each table of the file travels through
COPY in batches: DuckDB casts every value to text, Arrow writes the batch as CSV, PostgreSQL parses each value into
its own column type. Before the commit every table's count in PostgreSQL is compared with the file's; a
difference rolls everything back. Interrupted, refused or failed, the target holds none of it, and the copy can be
run again. The file is held open for writing throughout (and migrated first, as `serve` would), so no API can start
on it meanwhile; one already running makes the copy refuse (DatabaseLocked).

change_xid is not copied: PostgreSQL stamps every row with the copy's transaction, and the warehouse's first round
reads them all.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import duckdb
import psycopg
import pyarrow.csv as pa_csv
from psycopg import sql

from ingest.store import postgres
from ingest.store.postgres import describe
from ingest.store.writer import StoreUnavailable

CHANGE_COLUMN = "change_xid"  # migration 011: the transaction that last wrote a row, stamped by PostgreSQL
COPY_LOCK_KEY = 0x61747473  # any constant every `db copy` shares ("atts")
BATCH_ROWS = 50_000
CONNECT_TIMEOUT_SECONDS = 10
_OWN = frozenset({"schema_migrations"})  # the target keeps its own record of the migrations it ran
_SESSION = ("set datestyle = 'ISO, YMD'", "set client_encoding = 'UTF8'", "set time zone 'UTC'")


class CopyRefused(Exception):
    """The copy was not made (the target is not empty, cannot be reached, or does not fit); the message says why
    in one line, without the URL's password. The target holds nothing of it."""


def scrubbed(text: str, url: str) -> str:
    """`text` with the URL and its password taken out (a driver's message may quote what it was given)."""
    text = text.replace(url, f"postgresql://{describe(url)}")
    password = urlsplit(url).password
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return text


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def source_counts(source: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows of each table of the embedded file that the copy moves, by name."""
    tables = source.execute(
        "select table_name from duckdb_tables() where database_name = current_database() "
        "and schema_name = 'main' and not temporary order by table_name"
    ).fetchall()
    counts = {}
    for (name,) in tables:
        if str(name) in _OWN:
            continue
        row = source.execute(f"select count(*) from {_quoted(str(name))}").fetchone()  # noqa: S608 - catalog names
        counts[str(name)] = int(row[0]) if row else 0
    return counts


def _source_columns(source: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = source.execute(
        "select column_name from duckdb_columns() where database_name = current_database() "
        "and schema_name = 'main' and table_name = ? order by column_index",
        [table],
    ).fetchall()
    return [str(name) for (name,) in rows if str(name) != CHANGE_COLUMN]


def postgres_columns(raw: psycopg.Connection[Any]) -> dict[str, set[str]]:
    """The columns of each table of the PostgreSQL database's public schema."""
    columns: dict[str, set[str]] = {}
    for table, column in raw.execute(
        "select c.relname, a.attname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "join pg_attribute a on a.attrelid = c.oid "
        "where n.nspname = 'public' and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped"
    ).fetchall():
        columns.setdefault(str(table), set()).add(str(column))
    return columns


def _occupied(raw: psycopg.Connection[Any], tables: set[str]) -> list[str]:
    occupied = []
    for table in sorted(tables - _OWN):
        row = raw.execute(
            sql.SQL("select exists (select 1 from {})").format(sql.Identifier(table))
        ).fetchone()
        if row and row[0]:
            occupied.append(table)
    return occupied


def _refuse_occupied(url: str, occupied: list[str]) -> CopyRefused:
    return CopyRefused(
        f"PostgreSQL at {describe(url)} is not empty ({', '.join(occupied[:6])} hold rows): "
        "`db copy` moves a history into an empty database only"
    )


def _connect(url: str) -> psycopg.Connection[Any]:
    raw = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    for statement in _SESSION:
        raw.execute(statement)
    raw.commit()
    return raw


def copy_to_postgres(
    source: duckdb.DuckDBPyConnection,
    url: str,
    *,
    progress: Callable[[str, int], object] = lambda table, rows: None,
    batch_rows: int = BATCH_ROWS,
) -> dict[str, int]:
    """Copy every table of the open embedded file into the empty PostgreSQL database at `url`, telling `progress`
    each batch (table, rows); return the rows now in PostgreSQL per table, each verified against the file's."""
    counts = source_counts(source)
    try:
        with _connect(url) as raw:  # refuse before migrating a database that holds anything
            occupied = _occupied(raw, set(postgres_columns(raw)))
        if occupied:
            raise _refuse_occupied(url, occupied)
        postgres.migrate(url)
        with _connect(url) as raw:
            raw.execute("select pg_advisory_xact_lock(%s)", [COPY_LOCK_KEY])
            targets = postgres_columns(raw)
            missing = sorted(set(counts) - set(targets))
            if missing:
                raise CopyRefused(
                    f"PostgreSQL at {describe(url)} has no table {', '.join(missing)} after migrating"
                )
            raw.execute(
                sql.SQL("lock table {} in exclusive mode").format(
                    sql.SQL(", ").join(sql.Identifier(table) for table in sorted(set(targets) - _OWN))
                )
            )
            occupied = _occupied(raw, set(targets))
            if occupied:
                raise _refuse_occupied(url, occupied)
            for table in counts:
                columns = _source_columns(source, table)
                unknown = [column for column in columns if column not in targets[table]]
                if unknown:
                    raise CopyRefused(f"PostgreSQL's {table} has no column {', '.join(unknown)}")
                _copy_table(source, raw, table, columns, batch_rows, progress)
            copied = {}
            for table in counts:
                row = raw.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
                copied[table] = int(row[0]) if row else 0
            wrong = [
                f"{table} {copied[table]:,} of {counts[table]:,}"
                for table in counts
                if copied[table] != counts[table]
            ]
            if wrong:
                raw.rollback()
                raise CopyRefused(f"counts differ after the copy ({'; '.join(wrong)}): nothing was committed")
            raw.commit()
    except psycopg.Error as exc:
        raise CopyRefused(f"PostgreSQL at {describe(url)}: {scrubbed(first_line(exc), url)}") from None
    except StoreUnavailable as exc:
        raise CopyRefused(scrubbed(str(exc), url)) from None
    return copied


def _copy_table(
    source: duckdb.DuckDBPyConnection,
    raw: psycopg.Connection[Any],
    table: str,
    columns: list[str],
    batch_rows: int,
    progress: Callable[[str, int], object],
) -> None:
    """One table through COPY, a batch of `batch_rows` at a time."""
    if not columns:
        return
    select = ", ".join(f"{_quoted(column)}::varchar as {_quoted(column)}" for column in columns)
    reader = source.sql(f"select {select} from {_quoted(table)}").to_arrow_reader(batch_rows)  # noqa: S608
    statement = sql.SQL("copy {} ({}) from stdin (format csv)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(column) for column in columns)
    )
    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for batch in reader:
            buffer = io.BytesIO()
            pa_csv.write_csv(batch, buffer, options)  # null: an empty field; "": a quoted empty string
            copy.write(buffer.getbuffer())
            progress(table, batch.num_rows)
