"""`attribution reconcile` on the database file and on the replica, `--check`, repair from the CLI, and the API's
reconcile endpoints refusing what they cannot do with a clear 4xx / 5xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.core.clock import utcnow
from ingest.core.errors import Conflict
from ingest.core.settings import Settings
from ingest.reconcile.pull import pull_systems
from ingest.reconcile.repair import RepairRequest, find_repairs, queue_repairs
from ingest.reconcile.replica import live_models
from ingest.reconcile.repository import replace_records
from ingest.reconcile.schemas import PullIn, RepairOut, System
from ingest.store import postgres
from ingest.store.database import Database, open_database
from sandbox import Sandbox
from sandbox.fakes import MAILERLITE_API_KEY
from tests.conftest import ADMIN_TOKEN, lead_body, make_settings, serve, store_query, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def env_of(settings: Settings, sandbox: Sandbox) -> dict[str, str]:
    return {
        "ATTRIBUTION_DB_PATH": str(settings.attribution_db_path),
        "ATTRIBUTION_REPLICA_PATH": str(settings.attribution_replica_path),
        "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
        "ATTRIBUTION_LOG_LEVEL": "ERROR",
        "MAILERLITE_REQUESTS_PER_MINUTE": "0",
        **{k: v for k, v in sandbox.env().items() if k.startswith("MAILERLITE")},
    }


def _settled(client: httpx.Client) -> bool:
    listed = client.get("/v1/admin/deliveries", params={"status": "pending", "limit": 1}, headers=ADMIN)
    return not listed.json()["deliveries"]


@pytest.fixture
def two_leads_one_lost(tmp_path: Path, sandbox: Sandbox) -> tuple[Settings, str, str]:
    """A database file where MailerLite accepted two subscribers and kept only the first (the CLI's tests: the CLI
    writes the embedded file, or goes through the API that holds it)."""
    return _two_leads_one_lost(tmp_path, sandbox)


def _two_leads_one_lost(tmp_path: Path, sandbox: Sandbox, **store: Any) -> tuple[Settings, str, str]:
    sandbox.reset()
    for field in ("event_id", "payment_status"):  # as `attribution mailerlite setup-fields` would create them
        created = httpx.post(
            f"{sandbox.mailerlite_url}/api/fields",
            json={"name": field, "type": "text"},
            headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
        )
        assert created.status_code == 201
    mailerlite = {k.lower(): v for k, v in sandbox.env().items() if k.startswith("MAILERLITE")}
    settings = make_settings(
        tmp_path, **mailerlite, mailerlite_requests_per_minute=0, attribution_replica_seconds=0.2, **store
    )
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        kept = client.post("/v1/leads", json=lead_body(email="kept@example.com")).json()["event_id"]
        wait_until(lambda: _settled(client), what="the first subscriber")
        sandbox.set_faults("mailerlite", silent_loss=True)
        lost = client.post("/v1/leads", json=lead_body(email="lost@example.com")).json()["event_id"]
        wait_until(lambda: _settled(client), what="the second subscriber")
        sandbox.set_faults("mailerlite", clear=True)
    return settings, kept, lost


def test_reconcile_on_the_file_finds_the_lost_subscriber_and_check_fails(
    two_leads_one_lost: tuple[Settings, str, str], sandbox: Sandbox
) -> None:
    settings, kept, lost = two_leads_one_lost
    env = env_of(settings, sandbox)
    runner = CliRunner()
    before = runner.invoke(app, ["reconcile", "--json"], env=env)
    assert before.exit_code == 0, before.output
    document = json.loads(before.stdout)
    assert document["systems"] == [] and document["verified_data_consistency"]["verified_systems"] == []

    pulled = runner.invoke(app, ["reconcile", "pull", "mailerlite"], env=env)
    assert pulled.exit_code == 0, pulled.output
    assert "mailerlite: 1 records" in pulled.output

    report = runner.invoke(app, ["reconcile", "--json", "--check"], env=env)
    assert report.exit_code == 1 and "missing or stale in: mailerlite" in report.output
    document = json.loads(report.stdout)
    (mailerlite,) = document["systems"]
    assert (mailerlite["system"], mailerlite["source"], mailerlite["expected"], mailerlite["held"]) == (
        "mailerlite", "api", 2, 1,
    )  # fmt: skip
    assert mailerlite["missing"] == [lost] != [kept]
    assert mailerlite["unexpected"] == [] and mailerlite["stale"] == []
    metric = document["verified_data_consistency"]
    assert (metric["numerator"], metric["denominator"], metric["met"]) == (1, 2, False)
    assert metric["verified_systems"] == ["mailerlite"] and "crm" in metric["unverified_systems"]

    table = runner.invoke(app, ["reconcile"], env={**env, "COLUMNS": "250"})
    assert table.exit_code == 0 and lost in table.stdout and "1 / 2" in table.stdout

    dry = runner.invoke(app, ["reconcile", "repair", "--dry-run"], env=env)
    assert dry.exit_code == 0 and json.loads(dry.stdout)["queued"][0]["event_id"] == lost
    done = runner.invoke(app, ["reconcile", "repair", "--system", "mailerlite"], env=env)
    answer = json.loads(done.stdout)
    assert [item["event_id"] for item in answer["queued"]] == [lost] and answer["queued"][0]["delivery_id"]
    assert runner.invoke(app, ["reconcile", "repair", "--system", "nope"], env=env).exit_code == 2


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (in this process DuckDB would share the API's open database)."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_reconcile_reads_the_replica_while_the_api_holds_the_file(
    two_leads_one_lost: tuple[Settings, str, str], sandbox: Sandbox
) -> None:
    settings, _, lost = two_leads_one_lost
    env = env_of(settings, sandbox)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        env["ATTRIBUTION_API_URL"] = url
        pulled = _cli(env, "reconcile", "pull")
        assert pulled.returncode == 0 and "through" in pulled.stderr, pulled.stderr
        live = client.get("/v1/reconcile", headers=ADMIN).json()
        assert live["systems"][0]["missing"] == [lost]
        wait_until(
            lambda: json.loads(_cli(env, "reconcile", "--json").stdout)["systems"],
            what="a replica with the pull",
        )
        from_replica = json.loads(_cli(env, "reconcile", "--json", "--source", "replica").stdout)
        repaired = _cli(env, "reconcile", "repair")
        assert repaired.returncode == 0 and json.loads(repaired.stdout)["queued"][0]["event_id"] == lost
        without_token = _cli({**env, "ATTRIBUTION_ADMIN_TOKEN": ""}, "reconcile", "repair")
        assert without_token.returncode == 1 and "ATTRIBUTION_ADMIN_TOKEN" in without_token.stderr
    assert from_replica == live, "the replica's materialised models say what the live database says"


def test_the_reconcile_endpoints_refuse_clearly(
    tmp_path: Path, sandbox: Sandbox, engine: dict[str, Any]
) -> None:
    down = {
        "mailerlite_api_key": "k",
        "mailerlite_base_url": "http://127.0.0.1:9",
        "mailerlite_requests_per_minute": 0,
        **engine,
    }
    with serve(make_settings(tmp_path, **down)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/reconcile").status_code == 401
        assert client.post("/v1/admin/reconcile/pull", json={}).status_code == 401
        refused = client.post("/v1/admin/reconcile/pull", json={"systems": ["stripe"]}, headers=ADMIN)
        assert refused.status_code == 503 and "STRIPE_SECRET_KEY" in refused.json()["message"]
        no_api = client.post("/v1/admin/reconcile/pull", json={"systems": ["crm"]}, headers=ADMIN)
        assert no_api.status_code == 422 and no_api.json()["errors"][0]["field"] == "systems"
        assert (
            client.post("/v1/admin/reconcile/pull", json={"systems": ["x"]}, headers=ADMIN).status_code == 422
        )
        assert (
            client.post("/v1/admin/reconcile/pull", json={"since": "soon"}, headers=ADMIN).status_code == 422
        )
        unreachable = client.post("/v1/admin/reconcile/pull", json={"systems": ["mailerlite"]}, headers=ADMIN)
        assert unreachable.status_code == 502 and unreachable.json()["error"] == "system_unavailable"
        assert (
            client.post("/v1/admin/reconcile/repair", json={"system": "x"}, headers=ADMIN).status_code == 422
        )
        assert (
            client.post("/v1/admin/reconcile/repair", json={"dryrun": True}, headers=ADMIN).status_code == 422
        )
        report = client.get("/v1/reconcile", headers=ADMIN).json()
        assert report["systems"] == [], "the failed pull wrote nothing"


def _pulled_on_postgresql(tmp_path: Path, sandbox: Sandbox, postgres_url: str) -> tuple[Settings, str]:
    postgres.migrate(postgres_url)
    settings, _, lost = _two_leads_one_lost(tmp_path, sandbox, attribution_database_url=postgres_url)
    database = open_database(settings)
    try:
        pull_systems(
            settings,
            PullIn(systems=[System.MAILERLITE]),
            lambda records: database.writer.submit_sync(replace_records, records),
            stripe_client=None,
        )
    finally:
        database.close()
    return settings, lost


def test_two_instances_queueing_one_repair_at_once_queue_it_once(
    tmp_path: Path, sandbox: Sandbox, postgres_url: str
) -> None:
    settings, lost = _pulled_on_postgresql(tmp_path, sandbox, postgres_url)
    first, second = open_database(settings), open_database(settings)
    try:
        findings = live_models(first, settings, lambda conn: find_repairs(conn, System.MAILERLITE))
        assert [str(candidate.event_id) for candidate in findings.candidates] == [lost]
        barrier = threading.Barrier(2)

        def racing(conn: Any, batch: Sequence[RepairRequest]) -> Sequence[Any]:
            conn.execute("select 1")  # both transactions have begun before either plans
            barrier.wait(timeout=10)
            return queue_repairs(conn, batch)

        request = RepairRequest(settings, findings, utcnow())

        def repair(database: Database) -> RepairOut | Conflict:
            try:
                return database.writer.submit_sync(racing, request)
            except Conflict as refused:
                return refused

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(repair, (first, second)))
        queued = [
            item.event_id for answer in answers if isinstance(answer, RepairOut) for item in answer.queued
        ]
        assert queued == [lost], answers
        refused = [answer for answer in answers if isinstance(answer, Conflict)]
        assert len(refused) == 1 and "another instance" in str(refused[0])
        again = second.writer.submit_sync(queue_repairs, RepairRequest(settings, findings, utcnow()))
        assert again.queued == [] and "already waiting" in again.not_repaired[0].reason
    finally:
        second.close()
        first.close()
    waiting = store_query(
        settings, "select count(*) from deliveries where event_id = ? and status = 'pending' and kind = ?",
        [lost, "subscriber_upsert"],
    )  # fmt: skip
    assert waiting == [(1,)]


def test_repairs_from_two_served_instances_send_the_lost_subscriber_once(
    tmp_path: Path, sandbox: Sandbox, postgres_url: str
) -> None:
    settings, lost = _pulled_on_postgresql(tmp_path, sandbox, postgres_url)
    sandbox.clear("mailerlite")
    with (
        serve(settings) as first_url,
        serve(settings) as second_url,
        httpx.Client(base_url=first_url, timeout=60) as first,
        httpx.Client(base_url=second_url, timeout=60) as second,
    ):
        dry = second.post("/v1/admin/reconcile/repair", json={"dry_run": True}, headers=ADMIN).json()
        assert [item["event_id"] for item in dry["queued"]] == [lost]

        def repair(client: httpx.Client) -> httpx.Response:
            return client.post("/v1/admin/reconcile/repair", json={}, headers=ADMIN)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(repair, (first, second)))
        assert all(answer.status_code in (200, 409) for answer in answers), [a.text for a in answers]
        queued = [item["event_id"] for a in answers if a.status_code == 200 for item in a.json()["queued"]]
        assert queued == [lost]
        wait_until(lambda: _settled(first), what="the repair sent")
        time.sleep(0.5)
        later = first.post("/v1/admin/reconcile/repair", json={}, headers=ADMIN).json()
    assert (
        later["queued"] == [] and "re-sent after the records were read" in later["not_repaired"][0]["reason"]
    )
    sent = [r for r in sandbox.requests("mailerlite") if r.method == "POST" and r.path == "/api/subscribers"]
    assert len(sent) == 1, "the lost subscriber re-sent once, by one instance"
