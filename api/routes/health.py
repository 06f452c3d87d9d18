"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import duckdb
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import DatabaseDep
from ingest.core.clock import utcnow
from ingest.store.status import beat
from ingest.store.writer import WriterStopped

router = APIRouter(tags=["health"])
READY_TIMEOUT_SECONDS = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _beat(conn: duckdb.DuckDBPyConnection, items: Sequence[None]) -> list[None]:
    beat(conn, utcnow())
    return [None for _ in items]


@router.get("/readyz", responses={503: {"description": "the database does not accept writes"}})
async def readyz(database: DatabaseDep) -> JSONResponse:
    """The database accepts and commits a write."""
    try:
        await asyncio.wait_for(database.writer.submit(_beat, None), READY_TIMEOUT_SECONDS)
    except (duckdb.Error, TimeoutError, WriterStopped) as exc:
        return JSONResponse(
            {"status": "unavailable", "reason": str(exc) or type(exc).__name__}, status_code=503
        )
    return JSONResponse({"status": "ready", "database": str(database.path)})
