"""GET /metrics after known traffic: outbox gauges, circuits, replica age, requests per route, writer commits."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ingest.ops.metrics import pool_figures
from ingest.store.database import open_database
from ingest.store.postgres import POOL_SIZE
from sandbox import Sandbox
from tests.conftest import make_settings, serve, wait_until
from tests.ops.conftest import ADMIN, EMAIL_DOMAIN, PHONE_DIGITS, ops_settings, pii_lead, sample, scrape

LEADS = 4


def test_metric_values_after_known_traffic(tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]) -> None:
    settings = ops_settings(tmp_path, sandbox, None, **store)
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)  # down for the whole test
    unknown = uuid.uuid4()
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for number in range(LEADS):
            assert client.post("/v1/leads", json=pii_lead(number)).status_code == 200
        assert client.post("/v1/leads", json=pii_lead(99, email="not-an-email")).status_code == 422
        assert client.get(f"/v1/admin/deliveries/{unknown}", headers=ADMIN).status_code == 404
        assert client.get("/no/such/page").status_code == 404

        def settled() -> tuple[str, dict] | None:
            text, samples = scrape(client)
            delivered = sample(
                samples, "attribution_deliveries", destination="mailerlite", status="delivered"
            )
            opened = sample(samples, "attribution_circuit_open", destination="crm")
            return (text, samples) if delivered == LEADS and opened == 1 else None

        text, samples = wait_until(settled, timeout=30, what="deliveries sent and the CRM circuit open")
        time.sleep(0.3)
        text, samples = scrape(client)

    assert sample(samples, "attribution_deliveries", destination="sgtm", status="delivered") == LEADS
    crm_waiting = sum(
        sample(samples, "attribution_deliveries", destination="crm", status=status) or 0
        for status in ("pending", "retrying")
    )
    assert crm_waiting == LEADS
    assert sample(samples, "attribution_deliveries", destination="crm", status="delivered") == 0
    assert sample(samples, "attribution_circuit_open", destination="mailerlite") == 0
    assert (sample(samples, "attribution_delivery_oldest_due_seconds", destination="crm") or 0) > 0
    assert sample(samples, "attribution_delivery_oldest_due_seconds", destination="mailerlite") == 0
    age = sample(samples, "attribution_replica_age_seconds")
    if store:  # PostgreSQL: `attribution warehouse` keeps the replica, not the API; the read pool is shown
        assert age is None
        assert sample(samples, "attribution_pg_pool_max") == POOL_SIZE
        size = sample(samples, "attribution_pg_pool_size") or 0
        in_use = sample(samples, "attribution_pg_pool_in_use")
        assert 1 <= size <= POOL_SIZE and in_use is not None and 0 <= in_use <= size
        assert sample(samples, "attribution_pg_pool_waiting") == 0
    else:
        assert age is not None and 0 <= age < 30
        assert sample(samples, "attribution_pg_pool_size") is None

    leads = {"route": "/v1/leads", "method": "POST"}
    assert sample(samples, "attribution_http_requests_total", **leads, status="200") == LEADS
    assert sample(samples, "attribution_http_requests_total", **leads, status="422") == 1
    assert sample(samples, "attribution_http_request_duration_seconds_count", **leads) == LEADS + 1
    one = {"route": "/v1/admin/deliveries/{delivery_id}", "method": "GET", "status": "404"}
    assert sample(samples, "attribution_http_requests_total", **one) == 1
    assert (
        sample(samples, "attribution_http_requests_total", route="unmatched", method="GET", status="404") == 1
    )
    assert (sample(samples, "attribution_writer_batch_jobs_count") or 0) >= LEADS
    assert (sample(samples, "attribution_writer_commit_seconds_sum") or 0) > 0

    # Templates, never raw paths or what the visitors typed.
    assert str(unknown) not in text and "/no/such/page" not in text
    assert EMAIL_DOMAIN not in text and "@" not in text and PHONE_DIGITS not in text


def test_a_body_refused_before_routing_counts_under_its_route(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = ops_settings(tmp_path, sandbox, None, attribution_max_body_bytes=1024, **store)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        too_big = client.post(
            "/v1/leads", content=b"{" + b" " * 4096 + b"}", headers={"content-type": "application/json"}
        )
        assert too_big.status_code == 413
        _, samples = scrape(client)
    assert (
        sample(samples, "attribution_http_requests_total", route="/v1/leads", method="POST", status="413")
        == 1
    )


def test_pool_gauges_count_reads_in_flight_and_those_waiting(
    tmp_path: Path, postgres_store: dict[str, Any]
) -> None:
    database = open_database(make_settings(tmp_path, **postgres_store))
    release = threading.Event()
    holding = threading.Semaphore(0)

    def hold(conn: Any) -> None:
        holding.release()
        release.wait(10)

    readers = [threading.Thread(target=database.read, args=(hold,)) for _ in range(POOL_SIZE + 2)]
    try:
        for reader in readers:
            reader.start()
        for _ in range(POOL_SIZE):
            assert holding.acquire(timeout=10), "a read holding a connection"

        def figures() -> dict[str, float]:
            return {name: value for name, _, value in pool_figures(database)}

        full = wait_until(
            lambda: (found := figures())["attribution_pg_pool_waiting"] == 2 and found,
            what="two reads waiting",
        )
        assert full["attribution_pg_pool_in_use"] == full["attribution_pg_pool_size"] == POOL_SIZE
        release.set()
        for reader in readers:
            reader.join(15)
        idle = figures()
        assert idle["attribution_pg_pool_in_use"] == 0 and idle["attribution_pg_pool_waiting"] == 0
    finally:
        release.set()
        database.close()
    assert pool_figures(database) == [], "a closed pool shows nothing"
