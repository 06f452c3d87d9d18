"""Backups of the embedded store while the API holds it (admin): `attribution db backup` comes here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AdminOnly, DatabaseDep, SettingsDep
from ingest.core.errors import Conflict
from ingest.ops.backup import back_up_live
from ingest.store.database import EmbeddedDatabase

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminOnly])


class BackupIn(BaseModel):
    """Where the API writes the backup: an absolute path of an empty (or new) folder on the API's host."""

    directory: str = Field(min_length=2, max_length=4096, pattern=r"^/[^\x00-\x1f\x7f]*$")


@router.post("/backup")
def backup(body: BackupIn, database: DatabaseDep, settings: SettingsDep) -> dict[str, Any]:
    """Copy the live database into `directory` (consistent, while writes go on); answer its manifest."""
    if not isinstance(database, EmbeddedDatabase):
        raise Conflict('the store is PostgreSQL: back it up with pg_dump (README "Running on PostgreSQL")')
    directory = Path(body.directory).resolve()
    manifest = back_up_live(database, settings, directory)
    return {
        "directory": str(directory),
        "taken_at": manifest.taken_at.isoformat(),
        "schema_version": manifest.schema_version,
        "tables": manifest.tables,
    }
