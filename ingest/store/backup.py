"""Backups of the embedded store: a consistent copy of every table, made while the API keeps writing.

`COPY FROM DATABASE` runs inside one read transaction, so the copy holds exactly the commits made before it
began (DuckDB readers never pause the writer), with every table's constraints and defaults. The copy is written
beside its final name and renamed once complete, with a manifest (`backup.json`) saying when it was taken, the
schema version, the row counts and whatever the caller computed on the same snapshot (the success report).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from ingest.core.clock import utcnow
from ingest.core.errors import Conflict
from ingest.store.database import DatabaseLocked, connect

BACKUP_FILE = "attribution.duckdb"
MANIFEST_FILE = "backup.json"
_SOURCE = "_backup_src"


class BackupError(Conflict):
    """A backup or restore cannot be done here (a folder already holding one, a held file); the message says
    why and what to do."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds: when it was taken, of what, and figures computed on the same snapshot."""

    taken_at: datetime
    source: str
    schema_version: int
    tables: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as JSON."""
        body = asdict(self) | {"taken_at": self.taken_at.isoformat()}
        return json.dumps(body, indent=2, default=str)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of the backup in `directory`."""
        path = directory / MANIFEST_FILE
        if not path.is_file() or not (directory / BACKUP_FILE).is_file():
            raise BackupError(f"{directory} holds no backup (no {MANIFEST_FILE} and {BACKUP_FILE})")
        body = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            taken_at=datetime.fromisoformat(body["taken_at"]),
            source=body["source"],
            schema_version=int(body["schema_version"]),
            tables={str(name): int(count) for name, count in body["tables"].items()},
            extra=body.get("extra", {}),
        )


def _literal(path: Path) -> str:
    # ATTACH takes no parameters; the path is the operator's, quoted as an SQL string literal.
    return "'" + str(path).replace("'", "''") + "'"


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _prepare(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    if (directory / MANIFEST_FILE).exists():
        raise BackupError(f"{directory} already holds a backup; choose an empty folder")
    if (directory / BACKUP_FILE).exists():
        raise BackupError(
            f"{directory} holds a backup that was cut off before its {MANIFEST_FILE} was written; "
            "remove the folder or choose another"
        )
    if any(item.name != f"{BACKUP_FILE}.partial" for item in directory.iterdir()):
        raise BackupError(f"{directory} is not empty; choose an empty folder")
    temp = directory / f"{BACKUP_FILE}.partial"
    for stale in (temp, temp.with_name(temp.name + ".wal")):
        stale.unlink(missing_ok=True)
    return temp


def copy_database(
    cursor: duckdb.DuckDBPyConnection,
    catalog: str,
    directory: Path,
    *,
    source: str,
    within: Callable[[duckdb.DuckDBPyConnection], dict[str, Any]] | None = None,
) -> Manifest:
    """Copy the database `catalog` seen by `cursor` into `directory`, from one snapshot; write its manifest.

    `within` runs on the cursor inside the same transaction, so what it computes describes exactly the copy.
    """
    temp = _prepare(directory)
    out = (
        f"_backup_out_{uuid.uuid4().hex[:12]}"  # attached instance-wide: two backups at once must not collide
    )
    try:
        cursor.execute(f"attach {_literal(temp)} as {out}")
        try:
            cursor.begin()
            taken_at = utcnow()
            cursor.execute(f"copy from database {_quoted(catalog)} to {out}")
            tables = _row_counts(cursor, catalog)
            version_row = cursor.execute(
                f"select coalesce(max(version), 0) from {_quoted(catalog)}.main.schema_migrations"  # noqa: S608
            ).fetchone()
            extra = within(cursor) if within is not None else {}
            cursor.commit()
            cursor.execute(f"checkpoint {out}")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                cursor.rollback()
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.execute(f"detach database if exists {out}")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, directory / BACKUP_FILE)
    manifest = Manifest(taken_at, source, int(version_row[0]) if version_row else 0, tables, extra)
    (directory / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _row_counts(cursor: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    names = cursor.execute(
        "select table_name from duckdb_tables() where database_name = ? and schema_name = 'main' "
        "and not temporary order by table_name",
        [catalog],
    ).fetchall()
    counts = {}
    for (name,) in names:
        row = cursor.execute(f"select count(*) from {_quoted(catalog)}.main.{_quoted(str(name))}").fetchone()  # noqa: S608
        counts[str(name)] = int(row[0]) if row else 0
    return counts


def current_catalog(cursor: duckdb.DuckDBPyConnection) -> str:
    """The name of the database a connection opened (the live store's catalog)."""
    row = cursor.execute("select current_database()").fetchone()
    return str(row[0]) if row else ""


@contextlib.contextmanager
def attached_read_only(path: Path) -> Any:
    """An in-memory connection with the idle database file attached read-only, its tables first on the path."""
    if not path.exists():
        raise BackupError(f"no database at {path}")
    conn = duckdb.connect()
    try:
        try:
            conn.execute(f"attach {_literal(path)} as {_SOURCE} (read_only)")
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise DatabaseLocked(f"{path} is open in another process") from exc
            raise
        conn.execute(f"set search_path = '{_SOURCE}.main'")
        yield conn, _SOURCE
    finally:
        conn.close()


def restore_database(directory: Path, target: Path, *, now: datetime) -> tuple[Manifest, Path | None]:
    """Put the backup in `directory` at `target`; return its manifest and where the previous file was kept.

    Refuses while a process (a running API) holds `target`. A database already there is kept beside it
    (`<name>.before-restore-<time>`), never deleted; its write-ahead log goes with it, since a stale log
    replayed over the restored file would corrupt it.
    """
    manifest = Manifest.read(directory)
    kept: Path | None = None
    if target.exists():
        try:
            connect(target, read_only=True).close()
        except DatabaseLocked as exc:
            raise BackupError(
                f"{target} is held by a running API; stop it (e.g. `systemctl stop attribution-serve`) before "
                "restoring over it: a restore never replaces the file under a running process"
            ) from exc
        kept = target.with_name(f"{target.name}.before-restore-{now.strftime('%Y%m%dT%H%M%S')}")
        os.replace(target, kept)
        wal = target.with_name(target.name + ".wal")
        if wal.exists():
            os.replace(wal, kept.with_name(kept.name + ".wal"))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f"{target.name}.restoring")
    shutil.copyfile(directory / BACKUP_FILE, temp)
    os.replace(temp, target)
    return manifest, kept
