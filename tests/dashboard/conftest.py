"""Dashboard fixtures: replicas of a generated database, of an empty one and of none, and AppTest over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ingest.core.settings import Settings
from ingest.reconcile.models import Metric, ModelParams, success_metrics
from ingest.reconcile.replica import publish_replica, reading
from ingest.store.database import Database
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth
from tests.conftest import ADMIN_TOKEN, make_settings

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = (
    "pages/overview.py",
    "pages/funnel.py",
    "pages/coverage.py",
    "pages/consent.py",
    "pages/deliveries.py",
    "pages/records.py",
)
RUN_TIMEOUT_SECONDS = 60
UNREACHABLE_API = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


@dataclass(frozen=True)
class Replica:
    """A published replica, the settings that read it, and what it must show."""

    settings: Settings
    truth: GroundTruth | None

    def metrics(self) -> list[Metric]:
        """The metrics as `attribution report` reads them from this replica."""
        with reading(self.settings, "replica") as reader:
            return success_metrics(reader.conn)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of a query over the models of this replica."""
        with reading(self.settings, "replica") as reader:
            return reader.conn.execute(sql).fetchall()


def publish(settings: Settings, params: ModelParams) -> None:
    """Publish the replica of settings' database, as the API does."""
    database = Database.open(settings.attribution_db_path)
    try:
        publish_replica(database, settings.attribution_replica_path, params)
    finally:
        database.close()


@pytest.fixture(scope="session")
def demo_replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    """A replica of 2,000 generated leads over 30 days (bulk mode), with the ground truth of its metrics."""
    root = tmp_path_factory.mktemp("dashboard-demo")
    settings = make_settings(root, attribution_api_url=UNREACHABLE_API)
    truth = generate_bulk(
        settings.attribution_db_path, BulkSpec(leads=2000, days=30, seed=3, chunk_leads=2000)
    )
    publish(settings, truth.params)
    return Replica(settings, truth)


@pytest.fixture(scope="session")
def empty_replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    """A replica the API published before anything was captured."""
    root = tmp_path_factory.mktemp("dashboard-empty")
    settings = make_settings(root, attribution_api_url=UNREACHABLE_API)
    publish(settings, ModelParams.from_settings(settings))
    return Replica(settings, None)


@pytest.fixture
def no_replica(tmp_path: Path) -> Replica:
    """Settings naming a replica that was never published."""
    return Replica(make_settings(tmp_path, attribution_api_url=UNREACHABLE_API), None)


def dashboard_env(settings: Settings) -> dict[str, str]:
    """The environment `attribution dashboard` would run with for these settings."""
    return {
        "ATTRIBUTION_DB_PATH": str(settings.attribution_db_path),
        "ATTRIBUTION_REPLICA_PATH": str(settings.attribution_replica_path),
        "ATTRIBUTION_API_URL": settings.attribution_api_url,
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
    }


@pytest.fixture
def dashboard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Replica], AppTest]]:
    """Start the dashboard (AppTest) over a replica: `at = dashboard(demo_replica)`; it is already run once."""

    def start(replica: Replica) -> AppTest:
        for name, value in dashboard_env(replica.settings).items():
            monkeypatch.setenv(name, value)
        app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_SECONDS)
        app.run()
        return app

    yield start


def texts(app: AppTest) -> str:
    """Every markdown, caption, info, warning, error and success text on the page, joined."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts.extend(str(element.value) for element in app.get(kind))
    return "\n".join(parts)
