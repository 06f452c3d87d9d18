"""Import: a CRM contacts export (CSV) or a GA4 purchase export (CSV or Parquet) read by DuckDB into the ext_*
tables, replacing that system's previous import in one transaction.

The whole file is read and checked before anything is written: a missing column, a row DuckDB cannot parse or one
that names nothing, and an empty file are refused with an error naming the column or the line, and nothing is
loaded. Lines are counted as in the file, the header being line 1 (a quoted value spanning lines counts once).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from ingest.core.clock import utcnow
from ingest.core.errors import InvalidField
from ingest.reconcile.repository import Records, records_table
from ingest.reconcile.schemas import ImportOut, RecordSource, System

PARQUET_MAGIC = b"PAR1"
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")


class ExportRejected(InvalidField):
    """An export file that cannot be loaded; `field` names the column, the line or the file."""


@dataclass(frozen=True)
class CrmColumns:
    """The CRM export's column names (CONTRACT.md defaults)."""

    contact_id: str = "contact_id"
    email: str = "email"
    event_id: str = "event_id"


@dataclass(frozen=True)
class Ga4Columns:
    """The GA4 export's column names; None: `transaction_id`, else `ecommerce.transaction_id` (a flattened column
    or the BigQuery export's `ecommerce` struct); the event_id from `event_id`, else `event_params`, else none."""

    transaction_id: str | None = None
    event_id: str | None = None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def _csv_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        header = next(csv.reader([first.decode("utf-8-sig")]), None)
    except UnicodeDecodeError:
        raise ExportRejected("line 1", "the header is not UTF-8 text") from None
    if not header or not any(name.strip() for name in header):
        raise ExportRejected("file", f"{path.name} is empty")
    return [name.strip() for name in header]


def _csv_relation(conn: duckdb.DuckDBPyConnection, path: Path, header: list[str]) -> str:
    """The FROM expression reading the CSV with our header, every value as text, refusing malformed rows."""
    if len(set(header)) != len(header):
        raise ExportRejected("line 1", "two columns share a name")
    columns = "{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in header) + "}"
    return (
        f"read_csv({_literal(str(path))}, header = true, auto_detect = false, columns = {columns}, "
        "delim = ',', quote = '\"', escape = '\"', strict_mode = true, null_padding = false)"
    )


def _duckdb_error(path: Path, exc: duckdb.Error) -> ExportRejected:
    text = str(exc)
    found = _CSV_LINE.search(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    why = next(
        (line for line in lines[1:] if not line.startswith(("Original Line", "Possible", "file =", "LINE"))),
        lines[0] if lines else type(exc).__name__,
    )
    if found:
        return ExportRejected(f"line {found.group(1)}", why)
    return ExportRejected("file", f"{path.name} cannot be read: {lines[0] if lines else why}")


def _memory() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute("set threads = 1")  # rows come back in file order, so row_number() is the line
    return conn


def _require(columns: list[str], wanted: str, what: str) -> str:
    if wanted not in columns:
        raise ExportRejected(
            wanted, f"the export has no column {wanted!r} ({what}); it has: {', '.join(columns)}"
        )
    return wanted


def read_crm_export(path: Path, names: CrmColumns) -> pa.Table:
    """The rows of a CRM contacts export, checked; raises ExportRejected naming the column or line."""
    _exists(path)
    header = _csv_header(path)
    contact_id = _require(header, names.contact_id, "the CRM's contact id; see --contact-id-column")
    email = _require(header, names.email, "the contact's email; see --email-column")
    event_id = _require(header, names.event_id, "our event_id; see --event-id-column")
    conn = _memory()
    try:
        rows = conn.sql(
            f"select row_number() over () + 1 as line, nullif(trim({_quoted(contact_id)}), '') as contact_id, "  # noqa: S608
            f"nullif(trim({_quoted(email)}), '') as email, nullif(trim({_quoted(event_id)}), '') as event_id "
            f"from {_csv_relation(conn, path, header)}"
        ).to_arrow_table()
        if rows.num_rows == 0:
            raise ExportRejected("file", f"{path.name} has a header but no rows")
        unnamed = conn.execute(
            "select min(line) from rows where contact_id is null and event_id is null"
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise _duckdb_error(path, exc) from None
    finally:
        conn.close()
    if unnamed[0] is not None:
        raise ExportRejected(f"line {unnamed[0]}", f"the row names neither a {contact_id} nor an {event_id}")
    return records_table(System.CRM, {name: rows.column(name).to_pylist() for name in rows.column_names})


def _ga4_relation(conn: duckdb.DuckDBPyConnection, path: Path) -> tuple[str, list[str]]:
    if _is_parquet(path):
        relation = f"read_parquet({_literal(str(path))})"
    else:
        relation = _csv_relation(conn, path, _csv_header(path))
    try:
        described = conn.execute(f"describe select * from {relation}").fetchall()  # noqa: S608
    except duckdb.Error as exc:
        raise _duckdb_error(path, exc) from None
    return relation, [str(row[0]) for row in described]


def _struct_fields(conn: duckdb.DuckDBPyConnection, relation: str, column: str) -> list[str]:
    rows = conn.execute(f"select typeof({_quoted(column)}) from {relation} limit 1").fetchall()  # noqa: S608
    kind = str(rows[0][0]) if rows else ""
    return re.findall(r"(\w+) [A-Z]", kind) if kind.startswith("STRUCT") else []


def read_ga4_export(path: Path, names: Ga4Columns) -> pa.Table:
    """The purchases of a GA4 export, checked; raises ExportRejected naming the column or line."""
    _exists(path)
    conn = _memory()
    try:
        relation, columns = _ga4_relation(conn, path)
        if names.transaction_id is not None:
            transaction = _quoted(_require(columns, names.transaction_id, "see --transaction-id-column"))
        elif "transaction_id" in columns:
            transaction = '"transaction_id"'
        elif "ecommerce.transaction_id" in columns:
            transaction = '"ecommerce.transaction_id"'
        elif "ecommerce" in columns and "transaction_id" in _struct_fields(conn, relation, "ecommerce"):
            transaction = '"ecommerce".transaction_id'
        else:
            raise ExportRejected(
                "transaction_id",
                f"the export has no column 'transaction_id' or 'ecommerce.transaction_id' (see "
                f"--transaction-id-column); it has: {', '.join(columns)}",
            )
        if names.event_id is not None:
            event_id = (
                f"cast({_quoted(_require(columns, names.event_id, 'see --event-id-column'))} as varchar)"
            )
        elif "event_id" in columns:
            event_id = 'cast("event_id" as varchar)'
        elif "event_params" in columns:
            event_id = (
                "cast(list_extract(list_filter(event_params, lambda p: p.key = 'event_id'), 1).value.string_value "
                "as varchar)"
            )
        else:
            event_id = "cast(null as varchar)"
        purchases_only = "where \"event_name\" = 'purchase'" if "event_name" in columns else ""
        numbered = (
            f"select row_number() over () + {0 if _is_parquet(path) else 1} as line, "  # noqa: S608
            f"nullif(trim(cast({transaction} as varchar)), '') as transaction_id, "
            f"nullif(trim({event_id}), '') as event_id, "
            f"{'event_name' if purchases_only else 'null'} as event_name from {relation}"
        )
        rows = conn.sql(
            f"select line, transaction_id, event_id from ({numbered}) {purchases_only}"  # noqa: S608
        ).to_arrow_table()
        if rows.num_rows == 0:
            what = "no purchase rows" if purchases_only else "no rows"
            raise ExportRejected("file", f"{path.name} has {what}")
        blank = conn.execute("select min(line) from rows where transaction_id is null").fetchall()[0]
    except duckdb.Error as exc:
        raise _duckdb_error(path, exc) from None
    finally:
        conn.close()
    if blank[0] is not None:
        where = "row" if _is_parquet(path) else "line"
        raise ExportRejected(f"{where} {blank[0]}", "the purchase has no transaction_id")
    return records_table(System.GA4, {name: rows.column(name).to_pylist() for name in rows.column_names})


def _exists(path: Path) -> None:
    if not path.is_file():
        raise ExportRejected("file", f"no file at {path}")
    if path.stat().st_size == 0:
        raise ExportRejected("file", f"{path.name} is empty")


def import_export(
    system: System,
    path: Path,
    write: Callable[[Records], int],
    *,
    crm: CrmColumns | None = None,
    ga4: Ga4Columns | None = None,
    file_name: str | None = None,
) -> ImportOut:
    """Read and check the export, then replace the system's records with it in one write."""
    if system is System.CRM:
        rows = read_crm_export(path, crm or CrmColumns())
    elif system is System.GA4:
        rows = read_ga4_export(path, ga4 or Ga4Columns())
    else:
        raise ExportRejected(
            "system", f"{system} is read over its API: use `attribution reconcile pull {system}`"
        )
    name = file_name or path.name
    pulled_at = utcnow()
    write(Records(system, RecordSource.IMPORT, pulled_at, rows, detail=name))
    return ImportOut(system=system, records=rows.num_rows, pulled_at=pulled_at, file_name=name)
