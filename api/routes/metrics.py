"""Success metrics (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminOnly, DatabaseDep, SettingsDep
from api.errors import ADMIN_ROUTE
from ingest.reconcile.discrepancies import on_live_models
from ingest.reconcile.models import Metric, success_metrics

router = APIRouter(prefix="/v1/metrics", tags=["metrics"], dependencies=[AdminOnly], responses=ADMIN_ROUTE)


@router.get("/success")
def get_success_metrics(database: DatabaseDep, settings: SettingsDep) -> list[Metric]:
    """The five success metrics against their targets, computed now from the live operational store."""
    return on_live_models(database, settings, success_metrics)
