"""`GET /metrics` with several worker processes (PROMETHEUS_MULTIPROC_DIR): whichever worker answers, the request
counters are summed over all of them, the store's gauges are the shared store's, and the pool gauges add up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ingest.store.postgres import POOL_SIZE
from tests.conftest import ADMIN_TOKEN, free_port, lead_body, wait_until
from tests.ops.conftest import ADMIN, sample

WORKERS = 2
REQUESTS = 40


def _scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # A connection of its own each time, so the workers take turns answering.
    answer = httpx.get(f"{base_url}/metrics", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "pid=" not in answer.text, "summed, not one series per worker"
    return {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in text_string_to_metric_families(answer.text)
        for item in family.samples
    }


def test_every_worker_answers_the_sum_of_all_workers(tmp_path: Path, postgres_store: dict[str, Any]) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "ATTRIBUTION_DATABASE_URL": postgres_store["attribution_database_url"],
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
        "ATTRIBUTION_RATE_LIMIT_PER_MINUTE": "0",
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", str(WORKERS)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=60, what="the workers serving")
        for number in range(REQUESTS):  # a new connection each: the kernel hands them to either worker
            answer = httpx.get(f"{base_url}/healthz", timeout=10)
            assert answer.status_code == 200
        leads = [
            httpx.post(f"{base_url}/v1/leads", json=lead_body(email=f"w{n}@example.com")) for n in range(4)
        ]
        assert all(answer.status_code == 200 for answer in leads)
        # Each worker writes its pool figures every 2 s: both are in the sum once each has written.
        wait_until(
            lambda: sample(_scrape(base_url), "attribution_pg_pool_max") == WORKERS * POOL_SIZE,
            timeout=15,
            what="both workers' pool gauges",
        )
        for _ in range(6):
            samples = _scrape(base_url)
            healthz = {"route": "/healthz", "method": "GET", "status": "200"}
            assert sample(samples, "attribution_http_requests_total", **healthz) >= REQUESTS
            leads_ok = {"route": "/v1/leads", "method": "POST", "status": "200"}
            assert sample(samples, "attribution_http_requests_total", **leads_ok) == 4
            assert sample(samples, "attribution_pg_pool_max") == WORKERS * POOL_SIZE
            assert (sample(samples, "attribution_pg_pool_size") or 0) >= WORKERS
            assert sample(samples, "attribution_pg_pool_waiting") == 0
            # The store's own figures: the same whichever worker counts them (all four leads are in the outbox).
            assert sample(samples, "attribution_deliveries", destination="sgtm", status="disabled") == 4
            assert (sample(samples, "attribution_writer_batch_jobs_count") or 0) >= 4
        assert len({path.name.rsplit("_", 1)[-1] for path in folder.glob("*.db")}) >= WORKERS
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    assert not list(folder.glob("gauge_livesum_*.db")), "a stopped worker's pool figures leave the sum"
