"""Shared fixtures: real DuckDB files under tmp_path and the real app served over loopback HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import httpx
import psycopg
import pytest
import uvicorn

from api.app import create_app
from ingest.core.settings import Settings
from ingest.store import postgres
from ingest.store.transfer import copy_to_postgres
from sandbox.postgres import PostgresCluster, PostgresUnavailable

T = TypeVar("T")

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


def query(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Read a test database file (in the API's process it shares the open database instance)."""
    conn = duckdb.connect(str(path))
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the real app with uvicorn on a loopback port in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
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
    # Reached when the test passed: a stop that hangs or fails is a defect too (its traceback is in the log).
    assert not thread.is_alive(), "the API did not stop within 15 s"
    assert not server.lifespan.shutdown_failed, "the API's shutdown failed (see the captured log)"


@pytest.fixture
def store() -> dict[str, Any]:
    """Settings overrides naming the store the `settings`, `api` and `api_with` fixtures use: the embedded file here;
    a package whose conftest returns `engine` from it runs each of its tests on both engines."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, store: dict[str, Any]) -> Settings:
    return make_settings(tmp_path, **store)


@pytest.fixture
def api(settings: Settings) -> Iterator[httpx.Client]:
    """A client of the app served with the `settings` fixture."""
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


@pytest.fixture
def api_with(tmp_path: Path, store: dict[str, Any]) -> Iterator[Callable[..., httpx.Client]]:
    """Serve the app with setting overrides: `api_with(require_consent=False)`."""
    stack: list[Any] = []

    def start(**overrides: Any) -> httpx.Client:
        server = serve(make_settings(tmp_path, **store, **overrides))
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
        "landing_page": "https://cafecomvendas.example/lisbon?utm_source=instagram",
        "marketing_consent": True,
        "analytics_consent": True,
        "consent_method": "modal",
        "consent_version": "1.0",
    }
    body.update(overrides)
    return body


def consent_body(**overrides: Any) -> dict[str, Any]:
    """A valid, synthetic consent decision body."""
    body: dict[str, Any] = {
        "user_session_id": str(uuid.uuid4()),
        "marketing_consent": True,
        "analytics_consent": False,
        "consent_method": "modal",
        "consent_version": "1.0",
    }
    body.update(overrides)
    return body


class ApiProcess:
    """`attribution serve` as a real subprocess, for crash tests: start, kill -9, start again."""

    def __init__(self, env: dict[str, str], port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.args = args  # more `attribution serve` options, e.g. ("--workers", "2")
        self.env = {**os.environ, "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0", **env}
        if "ATTRIBUTION_DB_PATH" in env and "ATTRIBUTION_REPLICA_PATH" not in env:
            # Keep the published replica beside the test's database, not in the working directory's data/.
            self.env["ATTRIBUTION_REPLICA_PATH"] = str(
                Path(env["ATTRIBUTION_DB_PATH"]).with_suffix(".replica.duckdb")
            )
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until /readyz answers."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"attribution serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("attribution serve did not become ready")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no checkpoint."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.02
) -> T:
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


DISK_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES the test mounts itself (root); skipped with the reason where mounting is refused."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, mode: str) -> None:
    """Remount a small disk read-only (`ro`) or back (`rw`)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def fill_disk(mount_point: Path) -> Path:
    """Fill a small disk to the last byte with one file; return it (delete it to free the space)."""
    filler = mount_point / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[PostgresCluster]:
    """A started throwaway PostgreSQL server, stopped after (skipped with the reason where there is none; in CI,
    where ATTRIBUTION_REQUIRE_POSTGRES is set by .ci/run, its absence fails instead)."""
    try:
        cluster = PostgresCluster()
        cluster.start()
    except PostgresUnavailable as exc:
        if os.environ.get("ATTRIBUTION_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here: {exc}")
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session."""
    with _throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def own_postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL server of the test's own (to stop and start mid-test)."""
    with _throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a fresh, empty database of its own on the session's PostgreSQL server."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return postgres_cluster.url.rsplit("/", 1)[0] + f"/{name}"


# Texts that break naive COPY / CSV quoting (quotes, separators, escapes, NULL markers, line ends, non-ASCII).
TRICKY_TEXTS = [
    "",
    'a"b',
    "two\nlines",
    "comma, here",
    "back\\slash",
    "tab\there",
    "ünïcødé ☕",
    "\\N",
    " ",
    "\r\n",
    '"',
]


# The destinations sandbox.bulk's histories were made with: a CLI run over one needs them on for the same metrics.
BULK_DESTINATIONS_ENV = {
    "MAILERLITE_API_KEY": "configured",
    "CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
    "SGTM_ENDPOINT": "http://127.0.0.1:9/mp/collect",
}


def copy_bulk_to(bulk: Path, url: str) -> str:
    """Move a bulk DuckDB history into the empty PostgreSQL database at `url`, as `db copy` does; return the URL."""
    source = duckdb.connect(str(bulk))
    try:
        copy_to_postgres(source, url)
    finally:
        source.close()
    return url


@pytest.fixture(params=["duckdb", "postgresql"])
def engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides for each store engine, so one test runs on both: nothing for the embedded file, the URL of
    a fresh migrated database for PostgreSQL."""
    if request.param == "duckdb":
        return {}
    url: str = request.getfixturevalue("postgres_url")
    postgres.migrate(url)
    return {"attribution_database_url": url}


@pytest.fixture
def read_store(tmp_path: Path, store: dict[str, Any]) -> Callable[..., list[tuple[Any, ...]]]:
    """`read_store(sql, params)`: read the store the test's `settings`, `api` and `api_with` write."""
    settings = make_settings(tmp_path, **store)
    return lambda sql, params=None: store_query(settings, sql, params)


def store_query(settings: Settings, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Read the store the settings name (`?` placeholders on both engines)."""
    if settings.attribution_database_url is None:
        return query(settings.attribution_db_path, sql, params)
    with psycopg.connect(settings.attribution_database_url.get_secret_value()) as conn:
        return conn.execute(postgres.to_pyformat(sql) if params else sql, params or None).fetchall()
