"""Admin: backfill Stripe events that webhooks missed (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import AdminOnly, DatabaseDep, SettingsDep, StripeDep
from api.errors import ADMIN_ROUTE
from ingest.core.clock import InputTimestamp
from ingest.payments.sync import SyncReport, sync_stripe_events

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminOnly], responses=ADMIN_ROUTE)


class StripeSyncIn(BaseModel):
    """Optional start of the window; default: where the last sync left off, at most 30 days back."""

    model_config = ConfigDict(extra="forbid")

    since: InputTimestamp | None = None


@router.post(
    "/sync/stripe",
    response_model=SyncReport,
    responses={
        409: {"description": "a sync is already running"},
        502: {"description": "Stripe could not be reached"},
        503: {"description": "Stripe is not configured"},
    },
)
def sync_stripe(
    settings: SettingsDep, database: DatabaseDep, client: StripeDep, body: StripeSyncIn | None = None
) -> SyncReport:
    """List recent Stripe events and process the ones not yet settled; answer the counts."""
    return sync_stripe_events(settings, database, client, since=body.since if body else None)
