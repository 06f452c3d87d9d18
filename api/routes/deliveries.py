"""Admin: dead letters, replay and the delivery worker's state (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request

from api.deps import AdminOnly, DatabaseDep
from ingest.core.clock import utcnow
from ingest.core.errors import NotFound
from ingest.core.vocabulary import DeliveryStatus, Destination
from ingest.outbox.replay import (
    DeliveryDetail,
    DeliveryFilter,
    DeliveryList,
    ReplayIn,
    ReplayOut,
    ReplayRequest,
    count_replayable,
    get_delivery,
    list_deliveries,
    replay_deliveries,
)
from ingest.outbox.worker import DeliveryWorker

router = APIRouter(prefix="/v1/admin", tags=["deliveries"], dependencies=[AdminOnly])
log = logging.getLogger(__name__)


async def _worker(request: Request) -> DeliveryWorker | None:
    worker: DeliveryWorker | None = getattr(request.app.state, "delivery_worker", None)
    return worker


WorkerDep = Annotated[DeliveryWorker | None, Depends(_worker)]


@router.get("/deliveries")
async def get_deliveries(
    database: DatabaseDep,
    status: DeliveryStatus | None = None,
    destination: Destination | None = None,
    event_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    error: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    """Deliveries matching the filters, newest first (dead letters: `status=dead`)."""
    wanted = DeliveryFilter(
        status=status, destination=destination, event_id=event_id, since=since, until=until, error=error
    )
    return database.read(lambda conn: list_deliveries(conn, wanted, limit))


@router.get("/deliveries/{delivery_id}")
async def get_one_delivery(delivery_id: UUID, database: DatabaseDep) -> DeliveryDetail:
    """One delivery with every attempt made for it."""
    found = database.read(lambda conn: get_delivery(conn, delivery_id))
    if found is None:
        raise NotFound(f"no delivery {delivery_id}")
    return found


@router.post("/deliveries/replay")
async def post_replay(body: ReplayIn, database: DatabaseDep, worker: WorkerDep) -> ReplayOut:
    """Re-queue deliveries (dead ones unless ids or a status say otherwise) with a fresh retry budget."""
    if body.dry_run:
        return ReplayOut(replayed=database.read(lambda conn: count_replayable(conn, body)), dry_run=True)
    replayed = await database.writer.submit(replay_deliveries, ReplayRequest(body, utcnow()))
    log.info("deliveries replayed", extra={"replayed": replayed})
    if worker is not None:
        worker.wake()
    return ReplayOut(replayed=replayed, dry_run=False)


@router.get("/worker")
async def get_worker(worker: WorkerDep) -> dict[str, Any]:
    """The delivery worker's per-destination state: circuit breaker, in flight, pause, sent since start."""
    return {"running": worker is not None, "destinations": worker.status() if worker is not None else {}}
