"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import duckdb
import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import DatabaseDep
from ingest.core.clock import utcnow
from ingest.store.status import beat
from ingest.store.writer import StoreUnavailable

router = APIRouter(tags=["health"])
READY_TIMEOUT_SECONDS = 5.0
# After a write failed for the storage's sake, stay "not ready" this long even if the tiny probe write goes
# through: a nearly full disk takes a heartbeat row and refuses a lead.
READY_HOLD_SECONDS = 10.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _beat(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
    beat(conn, utcnow())
    return [None for _ in items]


@router.get("/readyz", responses={503: {"description": "the database does not accept writes"}})
async def readyz(database: DatabaseDep) -> JSONResponse:
    """The database accepts and commits a write, and no write failed for the storage's sake just before."""
    # Probes are unauthenticated: the reason says what failed, the log (and /v1/admin/status) say how.
    if database.writer.faulted_within(READY_HOLD_SECONDS):
        reason = f"a write failed for the storage's sake in the last {READY_HOLD_SECONDS:.0f} s"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    try:
        await asyncio.wait_for(database.writer.submit(_beat, None), READY_TIMEOUT_SECONDS)
    except (duckdb.Error, psycopg.Error, TimeoutError, StoreUnavailable) as exc:
        return JSONResponse(
            {"status": "unavailable", "reason": f"the probe write did not commit ({type(exc).__name__})"},
            status_code=503,
        )
    return JSONResponse({"status": "ready"})
