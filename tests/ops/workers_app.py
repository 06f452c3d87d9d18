"""The app as each of `--workers N` processes serves it, with this worker's pool gauges started after start-up
(the one line api.app's lifespan gains: `track_pool(database)`); uvicorn imports `create` in every worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.app import create_app
from api.telemetry import track_pool


def create() -> FastAPI:
    """create_app() whose lifespan also starts this worker's pool gauges."""
    app = create_app()
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[None]:
        async with started(running):
            gauges = track_pool(running.state.database)
            try:
                yield
            finally:
                gauges.stop()

    app.router.lifespan_context = lifespan
    return app
