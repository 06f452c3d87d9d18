"""Prometheus metrics: `GET /metrics` (the admin token when one is set)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import SettingsDep
from api.security import check_admin_token
from api.telemetry import ScrapeView

router = APIRouter(tags=["ops"])


async def _metrics_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    # Open when no admin token is set (a scrape on a private network); otherwise the token like any admin call.
    if settings.admin_tokens():
        check_admin_token(settings, authorization)


@router.get("/metrics", dependencies=[Depends(_metrics_auth)], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text format): outbox, circuits, replica age, requests per route, writer commits, pool."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    # With several workers (PROMETHEUS_MULTIPROC_DIR) the counters are summed over all of them.
    return Response(generate_latest(ScrapeView(registry)), media_type=CONTENT_TYPE_LATEST)
