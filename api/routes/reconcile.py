"""Reconciliation: our records against each system's own, pulls, imports and repairs (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import stripe
from anyio import from_thread
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminOnly, DatabaseDep, SettingsDep
from ingest.core.clock import utcnow
from ingest.core.errors import InvalidField
from ingest.outbox.worker import DeliveryWorker
from ingest.reconcile.discrepancies import live_reconcile
from ingest.reconcile.imports import CrmColumns, Ga4Columns, import_export
from ingest.reconcile.pull import pull_systems
from ingest.reconcile.repair import repair_now
from ingest.reconcile.repository import Records, replace_records
from ingest.reconcile.schemas import (
    IMPORTED,
    ImportOut,
    PullIn,
    PullOut,
    ReconcileOut,
    RepairIn,
    RepairOut,
    System,
)
from ingest.store.database import Database

IMPORT_PATH = "/v1/admin/reconcile/import"
router = APIRouter(prefix="/v1", tags=["reconcile"], dependencies=[AdminOnly])
log = logging.getLogger(__name__)


def _stripe_or_none(request: Request) -> stripe.StripeClient | None:
    client: stripe.StripeClient | None = request.app.state.stripe
    return client


def _worker(request: Request) -> DeliveryWorker | None:
    worker: DeliveryWorker | None = getattr(request.app.state, "delivery_worker", None)
    return worker


StripeOrNone = Annotated[stripe.StripeClient | None, Depends(_stripe_or_none)]
WorkerDep = Annotated[DeliveryWorker | None, Depends(_worker)]


def _writer(database: Database) -> Callable[[Records], int]:
    """Write one system's records through the database's one writer, waiting for the commit."""
    return lambda records: database.writer.submit_sync(replace_records, records)


@router.get("/reconcile")
def get_reconcile(database: DatabaseDep, settings: SettingsDep) -> ReconcileOut:
    """Each system's own records against ours (missing, unexpected, stale) and verified_data_consistency, now."""
    return live_reconcile(database, settings)


@router.post(
    "/admin/reconcile/pull",
    responses={502: {"description": "a system could not be read"}, 503: {"description": "not configured"}},
)
def post_pull(
    settings: SettingsDep, database: DatabaseDep, client: StripeOrNone, body: PullIn | None = None
) -> PullOut:
    """Read what Stripe and MailerLite hold into ext_* tables, each replacing that system's previous pull."""
    request = body or PullIn()
    result = pull_systems(settings, request, _writer(database), stripe_client=client)
    log.info("reconcile pull", extra={"systems": [item.system.value for item in result.pulled]})
    return result


class ImportIn(BaseModel):
    """An export file, base64-encoded, and the names of its columns (CONTRACT.md defaults when left out)."""

    model_config = ConfigDict(extra="forbid")

    system: System
    file_name: str = Field(min_length=1, max_length=255)
    content_base64: str
    contact_id_column: str | None = Field(default=None, min_length=1, max_length=200)
    email_column: str | None = Field(default=None, min_length=1, max_length=200)
    event_id_column: str | None = Field(default=None, min_length=1, max_length=200)
    transaction_id_column: str | None = Field(default=None, min_length=1, max_length=200)


@router.post(
    IMPORT_PATH.removeprefix("/v1"), responses={422: {"description": "the file or a line is refused"}}
)
def post_import(body: ImportIn, database: DatabaseDep) -> ImportOut:
    """Load a CRM or GA4 export (the file's bytes), replacing that system's previous import; nothing on error."""
    if body.system not in IMPORTED:
        raise InvalidField("system", f"{body.system} is read over its API: pull it instead")
    try:
        content = base64.b64decode(body.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField("content_base64", "not valid base64") from None
    crm = CrmColumns(
        **{
            key: value
            for key, value in (
                ("contact_id", body.contact_id_column),
                ("email", body.email_column),
                ("event_id", body.event_id_column),
            )
            if value is not None
        }
    )
    ga4 = Ga4Columns(transaction_id=body.transaction_id_column, event_id=body.event_id_column)
    with tempfile.TemporaryDirectory(prefix="attribution-import-") as folder:
        path = Path(folder) / "export"
        path.write_bytes(content)
        result = import_export(
            body.system, path, _writer(database), crm=crm, ga4=ga4, file_name=body.file_name
        )
    log.info("reconcile import", extra={"system": body.system.value, "records": result.records})
    return result


@router.post("/admin/reconcile/repair")
def post_repair(
    settings: SettingsDep, database: DatabaseDep, worker: WorkerDep, body: RepairIn | None = None
) -> RepairOut:
    """Re-send through the outbox what a system misses or holds stale (a dry run only lists it)."""
    result = repair_now(database, settings, body or RepairIn(), utcnow())
    if not result.dry_run and result.queued:
        log.info("reconcile repair queued", extra={"queued": len(result.queued)})
        if worker is not None:
            from_thread.run_sync(worker.wake)  # the worker's event is its loop's; this route runs in a thread
    return result
