"""Several API processes on one PostgreSQL database: `attribution serve --workers N`, and instances side by side."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
from typer.testing import CliRunner

from cli.main import app
from ingest.store import postgres
from tests.conftest import ADMIN_TOKEN, ApiProcess, free_port, lead_body

runner = CliRunner()
JOURNEYS = 40


def _said(output: str) -> str:
    return " ".join(output.split())


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
    return int(row[0]) if row else 0


def test_workers_on_the_embedded_file_are_refused_with_the_reason(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["serve", "--workers", "2"], env={"ATTRIBUTION_DB_PATH": str(tmp_path / "a.duckdb")}
    )
    assert result.exit_code == 2
    assert "--workers needs PostgreSQL" in _said(result.stderr)


def test_serve_at_an_unreachable_server_is_one_line_naming_the_variable() -> None:
    url = f"postgresql://shop:s3cret-pw@127.0.0.1:{free_port()}/attribution"
    result = runner.invoke(app, ["serve"], env={"ATTRIBUTION_DATABASE_URL": url})
    assert result.exit_code == 1
    said = _said(result.stderr)
    assert "ATTRIBUTION_DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:" in said
    assert "s3cret-pw" not in result.output and "Traceback" not in result.output


def test_serve_on_a_database_not_migrated_says_how(postgres_url: str) -> None:
    result = runner.invoke(app, ["serve"], env={"ATTRIBUTION_DATABASE_URL": postgres_url})
    assert result.exit_code == 1
    assert "is not migrated; run `attribution db migrate`" in _said(result.stderr)


async def _capture_on_both(bases: list[str]) -> list[tuple[int, bool | None]]:
    """Each journey's lead sent to every instance at the same moment, and the same event_id with another email."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(base: str, body: dict[str, object]) -> tuple[int, bool | None]:
            response = await client.post(f"{base}/v1/leads", json=body)
            return response.status_code, response.json().get("duplicate")

        calls = []
        for n in range(JOURNEYS):
            body = lead_body(event_id=str(uuid.uuid4()), email=f"buyer{n}@example.com")
            calls += [post(base, body) for base in bases]
            calls.append(post(bases[n % len(bases)], body | {"email": f"someone.else{n}@example.com"}))
        return await asyncio.gather(*calls)


def test_instances_share_one_database_and_every_lead_is_stored_once(
    postgres_url: str, tmp_path: Path
) -> None:
    postgres.migrate(postgres_url)
    env = {
        "ATTRIBUTION_DATABASE_URL": postgres_url,
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "replica.duckdb"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    two_workers = ApiProcess(env, args=("--workers", "2"))
    single = ApiProcess(env)
    two_workers.start()
    single.start()
    try:
        answers = asyncio.run(_capture_on_both([two_workers.base_url, single.base_url]))
        for index in range(JOURNEYS):
            same, again, other_email = answers[index * 3 : index * 3 + 3]
            # All three race: whichever email is stored first owns the event_id, the other email gets 409.
            if other_email == (200, False):
                assert same[0] == again[0] == 409
            else:
                assert sorted([same, again], key=str) == [(200, False), (200, True)], "one new, one duplicate"
                assert other_email[0] == 409
        ready = [httpx.get(f"{api.base_url}/readyz").json() for api in (two_workers, single)]
        assert ready == [{"status": "ready"}] * 2
        status = httpx.get(
            f"{single.base_url}/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).json()
        assert status["database"].startswith("postgresql://127.0.0.1:")
        assert status["tables"]["leads"] == JOURNEYS
    finally:
        two_workers.stop()
        single.stop()
    assert _count(postgres_url, "leads") == JOURNEYS
    assert _count(postgres_url, "consent_ledger") == JOURNEYS
    assert (
        _count(postgres_url, "deliveries") == JOURNEYS * 4
    )  # one per destination, each recorded disabled here


def test_two_instances_batches_that_deadlock_are_run_again_not_refused(postgres_url: str) -> None:
    # Two instances' writers each lock one row, then want the other's: PostgreSQL aborts one transaction as a
    # deadlock. Nothing of it was written, so that writer runs its batch again instead of answering 503.
    postgres.migrate(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("create table counters (id integer primary key, n integer not null)")
        admin.execute("insert into counters values (1, 0), (2, 0)")
    both_hold_one = threading.Barrier(2, timeout=20)
    runs: list[int] = []

    def lock_in_order(conn: postgres.PgConnection, orders: Sequence[tuple[int, int]]) -> list[None]:
        for first, second in orders:
            conn.execute("update counters set n = n + 1 where id = ?", [first])
            first_run = first not in runs
            runs.append(first)
            if first_run:  # waits for the other instance to hold its row
                both_hold_one.wait()
            conn.execute("update counters set n = n + 1 where id = ?", [second])
        return [None for _ in orders]

    instances = [postgres.PostgresDatabase.connect(postgres_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(instance.writer.submit_sync, lock_in_order, order)
                for instance, order in zip(instances, [(1, 2), (2, 1)], strict=True)
            ]
            assert [future.result(timeout=60) for future in done] == [None, None]
    finally:
        for instance in instances:
            instance.close()
    assert sorted(runs) in ([1, 1, 2], [1, 2, 2]), "one of the two batches ran again"
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select n from counters order by id").fetchall() == [(2,), (2,)]
