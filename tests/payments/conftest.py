"""Stripe test fixtures: one localstripe and one sandbox for the session, and the app served with Stripe on (each
test that serves it runs on both engines: the embedded DuckDB file and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import duckdb
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from ingest.core.settings import Settings
from ingest.store.database import Database
from sandbox import LocalStripe, Sandbox
from tests.conftest import free_port, lead_body, make_settings, wait_until
from tests.payments.events import signed

T = TypeVar("T")
WEBHOOK_ID = "attribution-tests"
PRICE_CENTS = 4700


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    return engine


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    """One localstripe child process for the whole test session."""
    with LocalStripe() as server:
        yield server


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The MailerLite / CRM / sGTM fakes, so every destination counts as configured."""
    with Sandbox() as fakes:
        yield fakes


def stripe_settings(tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, **overrides: Any) -> Settings:
    """Test settings pointing at localstripe and the fakes, with a product price."""
    values: dict[str, Any] = {
        name.lower(): value for name, value in (localstripe.env() | sandbox.env()).items()
    }
    values |= {"product_price_cents": PRICE_CENTS}
    return make_settings(tmp_path, **(values | overrides))


@dataclass
class RunningApi:
    """The real app on a loopback port, with its database at hand for assertions."""

    app: FastAPI
    client: httpx.Client
    settings: Settings

    @property
    def database(self) -> Database:
        database: Database = self.app.state.database
        return database

    @property
    def webhook_url(self) -> str:
        return f"{self.client.base_url}/v1/webhooks/stripe"

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read on the live database."""
        return self.database.read(lambda conn: conn.execute(sql, list(params)).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row."""
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def post_event(
        self, body: dict[str, Any] | str, *, secret: str | None = None, timestamp: int | None = None
    ) -> httpx.Response:
        """Deliver one signed event the way Stripe does."""
        key = secret if secret is not None else self.settings.stripe_webhook_secrets()[0]
        text, headers = signed(body, key, timestamp=timestamp)
        return self.client.post("/v1/webhooks/stripe", content=text, headers=headers)

    def create_lead(self, **overrides: Any) -> UUID:
        """Capture a lead through the API; return its event_id."""
        response = self.client.post("/v1/leads", json=lead_body(**overrides))
        assert response.status_code == 200, response.text
        return UUID(response.json()["event_id"])


@contextmanager
def serve_app(settings: Settings) -> Iterator[RunningApi]:
    """Serve the real app with uvicorn in a thread, keeping the app object for its database."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 15, "the test API to start")
    if not server.started:
        raise RuntimeError("test API did not start")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield RunningApi(app=app, client=client, settings=settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def stripe_api_with(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, store: dict[str, Any]
) -> Iterator[Callable[..., RunningApi]]:
    """Serve the app with Stripe on (and setting overrides) on the test's store; localstripe's webhook points at the
    latest one."""
    stack: list[Any] = []

    def start(**overrides: Any) -> RunningApi:
        server = serve_app(stripe_settings(tmp_path, localstripe, sandbox, **(store | overrides)))
        api = server.__enter__()
        stack.append(server)
        localstripe.register_webhook(WEBHOOK_ID, api.webhook_url, localstripe.webhook_secret)
        return api

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)


@pytest.fixture
def stripe_api(stripe_api_with: Callable[..., RunningApi]) -> RunningApi:
    """The app with Stripe, the fakes and a product price configured."""
    return stripe_api_with()


def rename_table(conn: duckdb.DuckDBPyConnection, renames: Sequence[tuple[str, str]]) -> list[None]:
    """Writer batch handler used to simulate a database fault: a table the processing needs goes missing."""
    for old, new in renames:
        conn.execute(f"alter table {old} rename to {new}")
    return [None for _ in renames]
