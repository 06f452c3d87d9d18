"""The FastAPI application factory: one writer per process, on the embedded DuckDB file or on PostgreSQL."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from api.assets import StaticAssets
from api.errors import EVERY_ROUTE, install_error_handlers
from api.routes import (
    admin,
    backup,
    client,
    consent,
    deliveries,
    demo,
    health,
    leads,
    metrics,
    ops,
    payments,
    reconcile,
    stripe_admin,
    webhooks,
)
from api.security import RateLimiter, RequestLimits
from api.telemetry import RequestMetrics, track_pool
from ingest.core.settings import Settings, load_settings
from ingest.ops.alerts import AlertMonitor
from ingest.ops.metrics import StoreCollector, WriterMetrics
from ingest.outbox.worker import DeliveryWorker
from ingest.payments.checkout import Checkout, stripe_client
from ingest.reconcile.replica import ReplicaPublisher
from ingest.store.database import EmbeddedDatabase, open_database

log = logging.getLogger(__name__)

# Python's cyclic collector scans its youngest objects every 700 net allocations: with 32 requests in flight that
# was ~150 scans a second, each walking every object of the requests under way, and every hundredth or so a full
# one walking the ~110,000 objects the start-up left (60-75 ms with the event loop stopped); in all ~0.1 ms of CPU
# a lead. Almost everything a request allocates is freed by reference counting long before 10,000 allocations.
GC_YOUNG_THRESHOLD = 10_000


class _CollectorTuning:
    """While an app serves, the youngest generation is scanned every GC_YOUNG_THRESHOLD net allocations. The
    threshold is process-wide, so the first app to start raises it and the last to stop puts it back (tests run
    many apps)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving = 0
        self._saved = gc.get_threshold()

    def start(self) -> None:
        with self._lock:
            if self._serving == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(max(GC_YOUNG_THRESHOLD, self._saved[0]), *self._saved[1:])
            self._serving += 1

    def stop(self) -> None:
        with self._lock:
            self._serving -= 1
            if self._serving == 0:
                gc.set_threshold(*self._saved)


_collector = _CollectorTuning()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is opened at start-up, not at import."""
    settings = settings or load_settings()
    # One registry per app (not prometheus_client's global one), so apps in one process keep their own counts.
    registry = CollectorRegistry()
    writer_metrics = WriterMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(settings)
        app.state.database = database
        database.writer.observe_commit = writer_metrics.observe
        monitor = AlertMonitor(database, settings)
        app.state.alert_monitor = monitor
        # One Stripe SDK client and one Checkout (it holds the per-lead locks) for the app's life.
        client = stripe_client(settings) if settings.stripe_secret_key is not None else None
        app.state.stripe = client
        app.state.checkout = Checkout(settings, database, client) if client is not None else None
        # The embedded file publishes its own replica; on PostgreSQL `attribution warehouse` keeps it.
        publisher = ReplicaPublisher(database, settings) if isinstance(database, EmbeddedDatabase) else None
        if publisher is not None:
            publisher.on_published = monitor.evaluate_targets
        app.state.replica_publisher = publisher
        enabled = settings.destinations_enabled()
        log.info(
            "service started",
            extra={
                "database": database.location,
                "destinations_enabled": enabled,
                "require_consent": settings.require_consent,
            },
        )
        for name, on in enabled.items():
            if not on:
                log.warning(
                    "destination not configured: deliveries to it are recorded as disabled",
                    extra={"destination": name},
                )
        worker = (
            DeliveryWorker(database, settings, on_circuit_change=monitor.circuit_changed)
            if settings.attribution_delivery_worker
            else None
        )
        app.state.delivery_worker = worker
        collector = StoreCollector(
            database,
            circuits=worker.status if worker is not None else None,
            replica_taken_at=lambda: publisher.last.taken_at if publisher and publisher.last else None,
        )
        registry.register(collector)
        pool_gauges = track_pool(database)  # with several workers on PostgreSQL: this process's pool figures
        await monitor.start()
        if publisher is not None:
            publisher.start()
        if worker is not None:
            worker.resume_open_circuits(monitor.open_circuits())
            await worker.start()
        _collector.start()
        try:
            yield
        finally:
            # Each part stops even when one before it failed to, and the database is always closed last.
            async with AsyncExitStack() as stopping:
                stopping.callback(database.close)
                stopping.callback(_collector.stop)
                stopping.callback(registry.unregister, collector)
                stopping.callback(pool_gauges.stop)
                stopping.push_async_callback(monitor.stop)
                if publisher is not None:
                    stopping.callback(publisher.stop)
                if worker is not None:
                    stopping.push_async_callback(worker.stop)
            log.info("service stopped")

    app = FastAPI(
        title="Attribution ingest",
        summary="Leads, consent, Stripe and forwarding, tied together by one event_id.",
        version="0.1.0",
        lifespan=lifespan,
        responses=EVERY_ROUTE,
    )
    app.state.settings = settings
    app.state.metrics_registry = registry
    app.state.rate_limiter = RateLimiter(settings.attribution_rate_limit_per_minute)
    install_error_handlers(app)
    # The last added is the outermost: CORS wraps the limits, so a refusal (413, 415, 431) carries CORS headers.
    app.add_middleware(
        RequestLimits,
        max_bytes=settings.attribution_max_body_bytes,
        larger={reconcile.IMPORT_PATH: settings.attribution_max_import_bytes},
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.attribution_allowed_origins),
        allow_methods=["POST", "GET", "OPTIONS"],
        allow_headers=["Content-Type"],
        max_age=600,
    )
    for router in (
        health.router,
        leads.router,
        consent.router,
        admin.router,
        payments.router,
        webhooks.router,
        stripe_admin.router,
        deliveries.router,
        metrics.router,
        ops.router,
        backup.router,
        reconcile.router,
    ):
        app.include_router(router)
    app.include_router(client.router)
    if settings.attribution_demo:
        app.include_router(demo.router)
    app.mount("/static", StaticAssets(demo=settings.attribution_demo), name="static")
    # Outermost, so requests refused by the limits or CORS are counted too.
    app.add_middleware(RequestMetrics, registry=registry, templates=lambda: app.openapi()["paths"])
    return app
