"""`attribution db backup DIR` and `attribution db restore DIR` for the embedded DuckDB store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import duckdb
import typer

from cli.admin import through_api
from cli.common import console, settings_or_exit
from ingest.core.clock import utcnow
from ingest.ops.backup import back_up_file
from ingest.store.backup import BackupError, restore_database
from ingest.store.database import DatabaseLocked

_DIRECTORY = typer.Argument(help="The folder of the backup (empty for a new one).", file_okay=False)


def backup(directory: Annotated[Path, _DIRECTORY]) -> None:
    """A consistent copy of the database into DIR, while the API runs (through it) or not (from the file)."""
    settings = settings_or_exit(with_logging=True)
    target = directory.resolve()
    try:
        manifest = back_up_file(settings, target)
    except DatabaseLocked:
        answer = through_api(settings, "backing up", lambda api: api.backup(str(target)))
        taken, tables = answer["taken_at"], answer["tables"]
    except (BackupError, duckdb.Error) as exc:
        console.print(f"[red]backup failed: {exc}[/red]")
        raise typer.Exit(1) from None
    else:
        taken, tables = manifest.taken_at.isoformat(), manifest.tables
    console.print(
        f"backup of {sum(tables.values()):,} rows in {len(tables)} tables taken {taken} UTC into {target} "
        f"(leads {tables.get('leads', 0):,}, deliveries {tables.get('deliveries', 0):,})"
    )


def restore(directory: Annotated[Path, _DIRECTORY]) -> None:
    """Put the backup in DIR back as ATTRIBUTION_DB_PATH; refused while an API holds that file."""
    settings = settings_or_exit(with_logging=True)
    target = settings.attribution_db_path
    try:
        manifest, kept = restore_database(directory.resolve(), target, now=utcnow())
    except BackupError as exc:
        console.print(f"[red]restore refused: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"restored the backup taken {manifest.taken_at.isoformat()} UTC to {target}")
    if kept is not None:
        console.print(f"the database that was there is kept as {kept}")
    console.print("the read replica is republished when `attribution serve` starts")
