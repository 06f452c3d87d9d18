"""Operating fixtures: the alert receiver fake, settings pointed at it and the sandbox, and reading /metrics.

Tests that take `store` run on both engines (the backups stay the embedded file's: they do not take it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.core.settings import Settings
from ingest.store import postgres
from sandbox import Sandbox
from sandbox.alerts import AlertReceiver
from tests.conftest import ADMIN_TOKEN, lead_body
from tests.outbox.conftest import sandbox_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Synthetic PII the tests post and then look for where it must never appear.
EMAIL_DOMAIN = "pii-probe.example"
PHONE = "+351 912 345 678"
PHONE_DIGITS = "912345678"


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    return engine


@pytest.fixture
def postgres_store(postgres_url: str) -> dict[str, Any]:
    """Settings overrides naming a fresh migrated PostgreSQL database, for tests of several instances on one."""
    postgres.migrate(postgres_url)
    return {"attribution_database_url": postgres_url}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    with AlertReceiver() as running:
        yield running


def ops_settings(
    tmp_path: Path, sandbox: Sandbox, receiver: AlertReceiver | None, **overrides: Any
) -> Settings:
    """Sandbox settings (fast schedules) with alerts to the receiver, retried quickly, and a fast replica."""
    values: dict[str, Any] = {
        "attribution_replica_seconds": 0.2,
        "attribution_alert_max_backoff_seconds": 0.3,
        "attribution_alert_dead_window_seconds": 1.0,
    }
    if receiver is not None:
        values["attribution_alert_webhook_url"] = receiver.url
    return sandbox_settings(tmp_path, sandbox, **(values | overrides))


def scrape(client: httpx.Client) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """GET /metrics: its text, and every sample keyed by (name, sorted labels)."""
    response = client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    """One sample's value (None: absent)."""
    return samples.get((name, tuple(sorted(labels.items()))))


def pii_lead(number: int, **overrides: Any) -> dict[str, Any]:
    """A lead body whose email and phone the tests then look for in labels and alerts."""
    return lead_body(**({"email": f"lead{number}@{EMAIL_DOMAIN}", "phone": PHONE} | overrides))
