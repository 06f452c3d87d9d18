"""Request counts and latency per route for Prometheus, as a pure ASGI middleware (cheap on the hot path), and what
`GET /metrics` renders when several worker processes serve the API."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.ops.metrics import pool_figures
from ingest.store.database import Database

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"})
UNMATCHED = "unmatched"  # no route: a 404, or a request refused before routing that matches none


class RequestMetrics:
    """Counts every HTTP request by route template, method and status, and observes its latency.

    Outermost, so refusals by the limits and CORS are counted too. The label is the route's template
    (`/v1/admin/deliveries/{delivery_id}`), never the raw path: no id, email or scanner's path becomes a series.
    """

    def __init__(
        self, app: ASGIApp, registry: CollectorRegistry, templates: Callable[[], Iterable[str]]
    ) -> None:
        self.app = app
        self._templates = templates
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None
        self._requests = Counter(
            "attribution_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "attribution_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # labels() costs a lock and a dict lookup per call: keep each series' child at hand.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before starting a response

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) if route is not None else self._template(scope)
        label = template or UNMATCHED
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        key = (label, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._requests.labels(label, method, str(status))
        counter.inc()
        histogram = self._histograms.get(key[:2])
        if histogram is None:
            histogram = self._histograms[key[:2]] = self._latency.labels(label, method)
        histogram.observe(seconds)

    def _template(self, scope: Scope) -> str | None:
        # Refused before routing (413, 415, 431, a CORS preflight): find the template the path was meant for.
        if self._patterns is None:
            self._patterns = [(compile_path(template)[0], template) for template in self._templates()]
        path = scope["path"]
        return next((template for pattern, template in self._patterns if pattern.match(path)), None)


# --- several worker processes (`attribution serve --workers N`) ----------------------------------------------

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
POOL_REFRESH_SECONDS = 2.0


def multiprocess_dir() -> str | None:
    """The folder prometheus-client's multiprocess mode keeps every worker's values in (None: one process)."""
    return os.environ.get(MULTIPROCESS_ENV) or None


class ScrapeView:
    """What `GET /metrics` renders from an app's registry.

    One process: the registry as it is. Several workers (PROMETHEUS_MULTIPROC_DIR set before they started): the
    counters and histograms of every live and past worker, summed from their files by prometheus-client's
    MultiProcessCollector, and, for the rest, the registry's own collectors: the store's gauges (the same from any
    worker), circuits and replica age as the answering worker sees them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """The families to render, each once."""
        folder = multiprocess_dir()
        if folder is None:
            yield from self._registry.collect()
            return
        shared = CollectorRegistry()
        MultiProcessCollector(shared, path=folder)  # type: ignore[no-untyped-call]
        families = list(shared.collect())
        yield from families
        # A name the workers' files hold is theirs (summed); this process's own copy of it would repeat it.
        from_files = {family.name for family in families}
        yield from (family for family in self._registry.collect() if family.name not in from_files)


class PoolGauges:
    """In multiprocess mode, this worker's PostgreSQL pool figures, written every POOL_REFRESH_SECONDS to gauges
    summed over the live workers (a scrape answered by any worker shows them all); the thread ends with the pool.

    With one process the store's collector reads the pool at scrape time instead, and this does nothing.
    """

    def __init__(self, database: Database, *, interval: float = POOL_REFRESH_SECONDS) -> None:
        self._database = database
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gauges: dict[str, Gauge] = {}

    def start(self) -> PoolGauges:
        """Start refreshing (only with several workers on PostgreSQL); returns itself."""
        if multiprocess_dir() is None or not pool_figures(self._database):
            return self
        for name, text, _ in pool_figures(self._database):
            # registry=None: the value goes to this worker's file, which ScrapeView reads with the others'.
            self._gauges[name] = Gauge(name, text, registry=None, multiprocess_mode="livesum")
        self.refresh()
        atexit.register(self._leave)  # a worker that exits before its thread sees the pool closed
        self._thread = threading.Thread(target=self._run, name="pool-gauges", daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Write the pool's figures now."""
        for name, _, value in pool_figures(self._database):
            gauge = self._gauges.get(name)
            if gauge is not None:
                gauge.set(value)

    def stop(self) -> None:
        """Stop refreshing and take this worker's figures out of the sum."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval * 2)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not pool_figures(self._database):  # the pool closed: the app stopped
                break
            self.refresh()
        self._leave()

    def _leave(self) -> None:
        """Take this worker's figures out of the sum: its live gauges' file goes."""
        with contextlib.suppress(OSError):
            mark_process_dead(os.getpid(), multiprocess_dir())  # type: ignore[no-untyped-call]


def track_pool(database: Database) -> PoolGauges:
    """The lifespan's hook: start this worker's pool gauges (a no-op but with several workers on PostgreSQL)."""
    return PoolGauges(database).start()
