"""Admin endpoints (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminOnly, DatabaseDep
from api.errors import ADMIN_ROUTE
from ingest.outbox.repository import deliveries_by_status
from ingest.store.status import table_counts

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminOnly], responses=ADMIN_ROUTE)


@router.get("/status")
def admin_status(database: DatabaseDep) -> dict[str, Any]:
    """Row counts, deliveries by status, the writer's group-commit counters and why writes fail, if they do."""
    counts = database.read(table_counts)
    return {
        "database": database.location,
        "tables": counts,
        "deliveries_by_status": database.read(deliveries_by_status),
        "writer": {
            "batches_committed": database.writer.batches_committed,
            "jobs_committed": database.writer.jobs_committed,
            "last_fault": database.writer.last_fault,  # the storage's own words while writes fail, else null
        },
    }
