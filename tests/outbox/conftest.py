"""Forwarding fixtures: the sandbox fakes, settings pointed at them, and a real worker over a real database.

The package runs on both engines: `store` is the `engine` fixture, so every test that takes it (or `settings`,
`api`, `api_with`) runs once on the embedded DuckDB file and once on a fresh PostgreSQL database; a test that needs
the DuckDB file itself does not take it and says why."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.leads.consent import RequestContext
from ingest.leads.schemas import LeadIn
from ingest.leads.service import capture_leads, plan_lead
from ingest.outbox.gate import ConsentState
from ingest.outbox.planning import Delivery, plan_delivery
from ingest.outbox.worker import DeliveryWorker
from ingest.store.database import Database, open_database
from ingest.store.rows import insert_rows
from sandbox import Sandbox
from sandbox.harness import RecordedRequest
from tests.conftest import lead_body, make_settings

# Fast schedules so retries, cool-downs and polls fit in a test; the logic is the production one.
FAST = {
    "dlq_backoff_base_seconds": 0.05,
    "dlq_backoff_multiplier": 2.0,
    "dlq_max_retries": 3,
    "attribution_delivery_poll_seconds": 0.05,
    "attribution_circuit_breaker_threshold": 3,
    "attribution_circuit_breaker_cooldown_seconds": 0.5,
    "attribution_delivery_timeout_seconds": 5.0,
    "mailerlite_requests_per_minute": 0,
}


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    """Both engines for this package."""
    return engine


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The MailerLite, CRM and sGTM fakes on loopback, fresh for each test."""
    with Sandbox() as running:
        yield running


def sandbox_settings(tmp_path: Path, sandbox: Sandbox, **overrides: Any) -> Settings:
    """Settings pointed at the sandbox fakes, with the fast schedules above (pass `**store` for the engine)."""
    env = {name.lower(): value for name, value in sandbox.env().items()}
    return make_settings(tmp_path, **(env | FAST | overrides))


async def async_wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02
) -> Any:
    """`wait_until` for async tests: sleeps without blocking the worker's event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@asynccontextmanager
async def running_worker(
    settings: Settings, *, wait_ready: bool = True
) -> AsyncIterator[tuple[Database, DeliveryWorker]]:
    """The database and a started delivery worker on the test's event loop, as the API runs them; by default
    once its MailerLite lane has ensured our custom fields (so faults set afterwards meet subscriber sends)."""
    database = open_database(settings)
    worker = DeliveryWorker(database, settings)
    await worker.start()
    try:
        if wait_ready:
            await async_wait_until(lambda: worker.status()["mailerlite"]["held"] is None, timeout=10)
        yield database, worker
    finally:
        await worker.stop()
        database.close()


def _insert_deliveries(conn: duckdb.DuckDBPyConnection, batches: Sequence[list[Delivery]]) -> list[None]:
    insert_rows(conn, "deliveries", [d.as_row() for batch in batches for d in batch])
    return [None] * len(batches)


def subscriber_requests(sandbox: Sandbox) -> list[RecordedRequest]:
    """The subscriber upserts the MailerLite fake received (the worker's custom-field set-up left out)."""
    return [r for r in sandbox.requests("mailerlite") if r.path == "/api/subscribers"]


async def capture(database: Database, settings: Settings, **overrides: Any) -> uuid.UUID:
    """Capture one lead through the real lead-capture handler; return its event_id."""
    context = RequestContext(received_at=utcnow(), ip="203.0.113.7", user_agent="pytest")
    plan = plan_lead(settings, LeadIn(**lead_body(**overrides)), context)
    await database.writer.submit(capture_leads, plan)
    return plan.event_id


def planned(
    settings: Settings,
    *,
    destination: Destination,
    kind: DeliveryKind,
    event_id: uuid.UUID | None,
    user_session_id: uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
    key_suffix: str | None = None,
    consent: ConsentState = ConsentState(marketing=True, analytics=True),
    now: datetime | None = None,
) -> Delivery:
    """One delivery row planned the way the payment handlers plan theirs."""
    return plan_delivery(
        settings,
        destination=destination,
        kind=kind,
        event_id=event_id,
        user_session_id=user_session_id,
        consent=consent,
        now=now or utcnow(),
        payload=payload,
        key_suffix=key_suffix,
    )


async def insert(database: Database, deliveries: list[Delivery]) -> None:
    """Queue planned deliveries in one transaction."""
    await database.writer.submit(_insert_deliveries, deliveries)


async def queue(database: Database, settings: Settings, **planning: Any) -> Delivery:
    """Plan and queue one delivery."""
    delivery = planned(settings, **planning)
    await insert(database, [delivery])
    return delivery


def _rows(conn: Any, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    result = conn.execute(sql, list(params))
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def delivery_rows(
    database: Database, where: str = "true", params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Deliveries as dicts (test-only SQL; either engine)."""
    sql = f"select * from deliveries where {where} order by created_at, delivery_id"
    return database.read(lambda conn: _rows(conn, sql, params))


def attempt_rows(database: Database, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    """The attempt log of one delivery, in order (test-only SQL; either engine)."""
    sql = "select * from delivery_attempts where delivery_id = ? order by attempt_number"
    return database.read(lambda conn: _rows(conn, sql, [delivery_id]))


def statuses(database: Database) -> dict[str, int]:
    """Delivery counts by status."""
    counts: dict[str, int] = {}
    for row in delivery_rows(database):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
