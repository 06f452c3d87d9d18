"""Shared fixtures: real DuckDB files under tmp_path and the real app served over loopback HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from ingest.settings import Settings

ADMIN_TOKEN = "test-admin-token"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own database file, no rate limit, admin on; no .env read."""
    values: dict[str, Any] = {
        "attribution_db_path": tmp_path / "attribution.duckdb",
        "attribution_replica_path": tmp_path / "attribution.replica.duckdb",
        "attribution_rate_limit_per_minute": 0,
        "attribution_admin_token": ADMIN_TOKEN,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the real app with uvicorn on a loopback port in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def api(settings: Settings) -> Iterator[httpx.Client]:
    """A client of the app served with the `settings` fixture."""
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


@pytest.fixture
def api_with(tmp_path: Path) -> Iterator[Callable[..., httpx.Client]]:
    """Serve the app with setting overrides: `api_with(require_consent=False)`."""
    stack: list[Any] = []

    def start(**overrides: Any) -> httpx.Client:
        server = serve(make_settings(tmp_path, **overrides))
        base_url = server.__enter__()
        client = httpx.Client(base_url=base_url, timeout=30)
        stack.append((server, client))
        return client

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)


def lead_body(**overrides: Any) -> dict[str, Any]:
    """A valid, synthetic lead capture body."""
    body: dict[str, Any] = {
        "full_name": "Ana Teste",
        "email": "ana.teste@example.com",
        "phone": "+351 912 345 678",
        "utm_source": "instagram",
        "utm_medium": "social",
        "utm_campaign": "lisbon-launch",
        "marketing_consent": True,
        "analytics_consent": True,
        "consent_method": "modal",
        "consent_version": "1.0",
    }
    body.update(overrides)
    return body
