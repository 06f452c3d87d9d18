"""Prometheus metrics of the service: the outbox and alert figures read from the store at scrape time, the
circuit states and replica age from the running process, the PostgreSQL read pool, and the writer's group commits
as histograms.

A scrape runs two grouped scans of `deliveries` (counts by destination and status, and the oldest due waiting
delivery) and one of the small `alerts` table, on a reader cursor: the writer is never paused. Those are facts of
the shared store, so on PostgreSQL every instance answers them alike; circuits, the replica age, the pool and the
writer are the answering process's own. Labels are destinations, statuses and route templates only, never an
email, phone or raw path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.core.clock import utcnow
from ingest.core.vocabulary import DeliveryStatus, Destination
from ingest.ops.repository import alerts_pending, delivery_counts, oldest_due
from ingest.store.database import Database
from ingest.store.postgres import POOL_WAIT_SECONDS, PostgresDatabase

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# The PostgreSQL read pool's gauges: name, help, and the figure from psycopg_pool's get_stats().
POOL_GAUGES: tuple[tuple[str, str, Callable[[Mapping[str, int]], int]], ...] = (
    (
        "attribution_pg_pool_size",
        "Connections the PostgreSQL read pool holds open.",
        lambda s: s["pool_size"],
    ),
    ("attribution_pg_pool_max", "Connections the PostgreSQL read pool may open.", lambda s: s["pool_max"]),
    (
        "attribution_pg_pool_in_use",
        "PostgreSQL read pool connections lent to a read now.",
        lambda s: s["pool_size"] - s["pool_available"],
    ),
    (
        "attribution_pg_pool_waiting",
        f"Reads waiting for a free PostgreSQL pool connection (each answered 503 after {POOL_WAIT_SECONDS:g} s).",
        lambda s: s.get("requests_waiting", 0),
    ),
)


def pool_figures(database: Database) -> list[tuple[str, str, float]]:
    """(gauge name, help, value) of the read pool; none on the embedded file or once the pool is closed."""
    if not isinstance(database, PostgresDatabase) or database.pool_closed:
        return []
    stats = database.pool_stats()
    return [(name, text, float(figure(stats))) for name, text, figure in POOL_GAUGES]


COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StoreCollector(Collector):
    """Gauges computed when Prometheus scrapes, from the store and the live worker and publisher."""

    def __init__(
        self,
        database: Database,
        *,
        circuits: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        replica_taken_at: Callable[[], datetime | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._database = database
        self._circuits = circuits
        self._replica_taken_at = replica_taken_at
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not query the store."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The gauges, as of now."""
        now = self._clock()
        deliveries = GaugeMetricFamily(
            "attribution_deliveries",
            "Deliveries in the outbox by destination and status.",
            labels=["destination", "status"],
        )
        counts = {
            (destination.value, status.value): 0 for destination in Destination for status in DeliveryStatus
        }
        for destination, status, count in self._database.read(delivery_counts):
            counts[(destination, status)] = count
        for (destination, status), count in sorted(counts.items()):
            deliveries.add_metric([destination, status], count)
        yield deliveries

        lag = GaugeMetricFamily(
            "attribution_delivery_oldest_due_seconds",
            "How long the longest-waiting due delivery of each destination has been due (0: none waiting).",
            labels=["destination"],
        )
        due = self._database.read(functools.partial(oldest_due, now=now))
        for destination in Destination:
            since = due.get(destination.value)
            lag.add_metric([destination.value], max((now - since).total_seconds(), 0.0) if since else 0.0)
        yield lag

        if self._circuits is not None:
            circuit = GaugeMetricFamily(
                "attribution_circuit_open",
                "1 while a destination's circuit is open or half-open (nothing but probes sent), 0 when closed.",
                labels=["destination"],
            )
            for destination, state in sorted(self._circuits().items()):
                circuit.add_metric([destination], 0.0 if state.get("breaker") == "closed" else 1.0)
            yield circuit

        if self._replica_taken_at is not None:
            taken_at = self._replica_taken_at()
            if taken_at is not None:
                yield GaugeMetricFamily(
                    "attribution_replica_age_seconds",
                    "Age of the data in the last published read replica.",
                    value=max((now - taken_at).total_seconds(), 0.0),
                )

        yield GaugeMetricFamily(
            "attribution_alerts_pending",
            "Alerts queued for ATTRIBUTION_ALERT_WEBHOOK_URL and not yet sent.",
            value=self._database.read(alerts_pending),
        )

        for name, text, value in pool_figures(self._database):
            yield GaugeMetricFamily(name, text, value=value)


class WriterMetrics:
    """Histograms of the writer's group commits: jobs per transaction and how long a transaction took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_jobs = Histogram(
            "attribution_writer_batch_jobs",
            "Jobs (leads, webhooks, delivery outcomes, ...) committed together in one writer transaction.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "attribution_writer_commit_seconds",
            "Duration of one writer transaction, from begin to committed.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )

    def observe(self, jobs: int, seconds: float) -> None:
        """Count one committed transaction."""
        self.batch_jobs.observe(jobs)
        self.commit_seconds.observe(seconds)
