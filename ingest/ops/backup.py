"""`attribution db backup / restore` for the embedded store, with the success report of the moment backed up.

While the API runs it holds the file, so the copy is made in the API process (`back_up_live`, behind its admin
endpoint) on a reader cursor: writes go on meanwhile. With no API running the CLI copies the idle file itself
(`back_up_file`). Either way the manifest keeps the success report computed on the same snapshot as the copy, so a
restore can be checked against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from ingest.core.settings import Settings
from ingest.reconcile.models import ModelParams, load_models, success_metrics
from ingest.store.backup import Manifest, attached_read_only, copy_database, current_catalog
from ingest.store.database import EmbeddedDatabase


def _report_within(settings: Settings) -> Any:
    params = ModelParams.from_settings(settings)

    def report(cursor: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        load_models(cursor, params, temporary=True)
        return {"metrics": [metric.model_dump() for metric in success_metrics(cursor)]}

    return report


def back_up_live(database: EmbeddedDatabase, settings: Settings, directory: Path) -> Manifest:
    """A consistent copy of the API's own database into `directory`, taken while it keeps writing."""
    cursor = database.conn.cursor()
    try:
        return copy_database(
            cursor,
            current_catalog(cursor),
            directory,
            source=str(database.path),
            within=_report_within(settings),
        )
    finally:
        cursor.close()


def back_up_file(settings: Settings, directory: Path) -> Manifest:
    """A copy of the idle database file (no API running) into `directory`."""
    with attached_read_only(settings.attribution_db_path) as (conn, catalog):
        return copy_database(
            conn,
            catalog,
            directory,
            source=str(settings.attribution_db_path),
            within=_report_within(settings),
        )
