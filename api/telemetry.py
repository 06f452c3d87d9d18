"""Request counts and latency per route for Prometheus, as a pure ASGI middleware (cheap on the hot path)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
