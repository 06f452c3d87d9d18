"""Admin: dead letters, replay and the delivery worker's state (Bearer ATTRIBUTION_ADMIN_TOKEN)."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request

from api.deps import AdminOnly, DatabaseDep
from api.errors import ADMIN_ROUTE, declared
from ingest.core.clock import utcnow
from ingest.core.errors import NotFound
from ingest.outbox.replay import (
    DeliveryDetail,
    DeliveryList,
    DeliveryListIn,
    ReplayIn,
    ReplayOut,
    ReplayRequest,
    count_replayable,
    get_delivery,
    list_deliveries,
    replay_deliveries,
)
from ingest.outbox.worker import DeliveryWorker

router = APIRouter(prefix="/v1/admin", tags=["deliveries"], dependencies=[AdminOnly], responses=ADMIN_ROUTE)
log = logging.getLogger(__name__)


async def _worker(request: Request) -> DeliveryWorker | None:
    worker: DeliveryWorker | None = getattr(request.app.state, "delivery_worker", None)
    return worker


WorkerDep = Annotated[DeliveryWorker | None, Depends(_worker)]


@router.get("/deliveries")
def get_deliveries(database: DatabaseDep, query: Annotated[DeliveryListIn, Query()]) -> DeliveryList:
    """Deliveries matching the filters, newest first (dead letters: `status=dead`)."""
    return database.read(lambda conn: list_deliveries(conn, query, query.limit))


@router.get("/deliveries/{delivery_id}", responses=declared(404))
def get_one_delivery(delivery_id: UUID, database: DatabaseDep) -> DeliveryDetail:
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
