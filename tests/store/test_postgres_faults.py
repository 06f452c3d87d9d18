"""PostgreSQL going away under load: 503 with Retry-After (never a 500 or a hang), nothing acknowledged lost, and
the API recovers by itself when the server is back."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psycopg

from ingest.store import postgres
from sandbox.postgres import PostgresCluster
from tests.conftest import lead_body, make_settings, serve, wait_until

LEADS = 240


def test_a_server_restart_under_load_is_503_then_recovers_losing_nothing(
    own_postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    postgres.migrate(own_postgres_cluster.url)
    settings = make_settings(tmp_path, attribution_database_url=own_postgres_cluster.url)
    acknowledged: list[str] = []
    answers: Counter[int] = Counter()
    retry_after: set[str | None] = set()
    restarted = threading.Event()

    def load(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=20) as client:
            for n in range(LEADS):
                event_id = str(uuid.uuid4())
                response = client.post(
                    "/v1/leads", json=lead_body(event_id=event_id, email=f"b{n}@example.com")
                )
                answers[response.status_code] += 1
                if response.status_code == 200:
                    acknowledged.append(event_id)
                elif response.status_code == 503:
                    retry_after.add(response.headers.get("Retry-After"))
                if n == LEADS // 4:
                    own_postgres_cluster.shut_down()
                    time.sleep(1.0)  # requests meanwhile meet a server that is gone
                    own_postgres_cluster.start_again()
                    restarted.set()

    with serve(settings) as base_url:
        started = time.monotonic()
        load(base_url)
        assert restarted.is_set()
        assert time.monotonic() - started < 120, "no request hung"
        # Recovered by itself: no restart of the API.
        wait_until(lambda: httpx.get(f"{base_url}/readyz").status_code == 200, what="ready again", timeout=30)
        assert (
            httpx.post(f"{base_url}/v1/leads", json=lead_body(email="after@example.com")).status_code == 200
        )

    assert set(answers) <= {200, 503}, f"only commits and 503s: {dict(answers)}"
    assert answers[503] >= 1, "the outage was seen"
    assert answers[200] >= LEADS // 2, "and the load went on after it"
    assert retry_after == {"5"} or not retry_after
    with psycopg.connect(own_postgres_cluster.url) as conn:
        stored = {str(row[0]) for row in conn.execute("select event_id from leads").fetchall()}
    assert set(acknowledged) <= stored, "every acknowledged lead is stored"
