"""kill -9 with deliveries in flight, and the `replay` / `mailerlite setup-fields` commands.

The kill -9 and replay-through-the-API tests are the embedded file's: one process owns it, so a restart releases the
dead one's leases, and the CLI goes through the API that holds the file. On PostgreSQL two `attribution serve` on one
database, one killed, are tests/outbox/test_instances.py; `replay` straight on the store runs on both engines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.store.database import open_database
from sandbox import Sandbox
from tests.conftest import ADMIN_TOKEN, ApiProcess, lead_body, wait_until
from tests.outbox.conftest import (
    FAST,
    async_wait_until,
    capture,
    delivery_rows,
    running_worker,
    sandbox_settings,
    statuses,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _env(sandbox: Sandbox, db_path: Path, **extra: Any) -> dict[str, str]:
    values = {name.upper(): str(value) for name, value in FAST.items()}
    return (
        sandbox.env()
        | values
        | {
            "ATTRIBUTION_DB_PATH": str(db_path),
            "ATTRIBUTION_REPLICA_PATH": str(db_path.with_suffix(".replica.duckdb")),
            "ATTRIBUTION_ADMIN_TOKEN": ADMIN_TOKEN,
            "ATTRIBUTION_INLINE_DELIVERY_MS": "0",
            **{name.upper(): str(value) for name, value in extra.items()},
        }
    )


def _all(api: ApiProcess, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{api.base_url}/v1/admin/deliveries", params={"limit": 1000, **params}, headers=ADMIN, timeout=10
    )
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def test_kill_9_with_deliveries_in_flight_delivers_every_one_after_restart_with_the_same_keys(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    leads = 12
    sandbox.set_faults("crm", latency_ms=6000)  # CRM requests hang: they are in flight at the kill
    api = ApiProcess(_env(sandbox, tmp_path / "crash.duckdb", crm_concurrency=16))
    api.start()
    try:
        with httpx.Client(base_url=api.base_url, timeout=10) as client:
            for n in range(leads):
                assert client.post("/v1/leads", json=lead_body(email=f"k{n}@example.com")).status_code == 200
            # Every CRM send has reached the fake (6 s of latency keeps each one unanswered at the kill).
            wait_until(lambda: sandbox.arrived("crm") == leads)
            worker = client.get("/v1/admin/worker", headers=ADMIN).json()
            assert worker["destinations"]["crm"]["in_flight"] == leads
        api.kill()
        sandbox.set_faults("crm", clear=True)
        api.start()
        wait_until(lambda: len(_all(api, status="delivered")) == 4 * leads, timeout=60)
        crm_rows = _all(api, destination="crm")
    finally:
        api.stop()
    expected = {row["idempotency_key"] for row in crm_rows}

    def sent() -> Counter[str]:
        return Counter(r.headers["idempotency-key"] for r in sandbox.requests("crm"))

    # The fake records a request when it answers: the cut-off ones once their hang is over.
    wait_until(lambda: sum(sent().values()) == 2 * leads, timeout=60)
    assert set(sent()) == expected and len(expected) == leads
    assert all(count == 2 for count in sent().values())  # cut off once, sent again with the same key
    assert sandbox.state("crm")["unique"] == leads  # none doubled at the receiver
    assert all(row["attempt_count"] == 1 for row in crm_rows)  # the cut-off send left no attempt behind


def test_replay_command_goes_through_the_running_api_when_it_holds_the_file(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    sandbox.set_faults("crm", reject_status=400)
    env = _env(sandbox, tmp_path / "held.duckdb")
    api = ApiProcess(env)
    api.start()
    try:
        with httpx.Client(base_url=api.base_url, timeout=10) as client:
            for n in range(2):
                client.post("/v1/leads", json=lead_body(email=f"r{n}@example.com"))
        wait_until(lambda: len(_all(api, status="dead")) == 2)
        sandbox.set_faults("crm", clear=True)
        runner = CliRunner()
        cli_env = env | {"ATTRIBUTION_API_URL": api.base_url}
        dry = runner.invoke(app, ["replay", "--destination", "crm", "--dry-run"], env=cli_env)
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.stdout.strip().splitlines()[-1]) == {"replayed": 2, "dry_run": True}
        done = runner.invoke(app, ["replay", "--destination", "crm", "--error", "HTTP 400"], env=cli_env)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"replayed": 2, "dry_run": False}
        wait_until(lambda: len(_all(api, status="delivered")) == 8)
        no_token = runner.invoke(app, ["replay"], env=cli_env | {"ATTRIBUTION_ADMIN_TOKEN": ""})
        assert no_token.exit_code == 1 and "ATTRIBUTION_ADMIN_TOKEN" in no_token.output
    finally:
        api.stop()


async def test_replay_command_works_straight_on_the_store_when_no_api_runs(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, store: dict[str, Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("crm", reject_status=400)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: statuses(database) == {"dead": 1, "delivered": 3})
    env = _env(sandbox, settings.attribution_db_path, **{name: str(value) for name, value in store.items()})
    runner = CliRunner()
    bad = runner.invoke(app, ["replay", "--status", "lost"], env=env)
    assert bad.exit_code == 2 and "status" in bad.output
    done = runner.invoke(app, ["replay"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"replayed": 1, "dry_run": False}
    database = open_database(settings)
    try:
        (row,) = delivery_rows(database, "destination = 'crm'")
    finally:
        database.close()
    assert row["status"] == "pending" and row["failure_count"] == 0 and row["attempt_count"] == 1


def test_mailerlite_setup_fields_creates_the_custom_fields_and_is_safe_to_run_twice(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = _env(sandbox, tmp_path / "unused.duckdb")
    runner = CliRunner()
    first = runner.invoke(app, ["mailerlite", "setup-fields"], env=env)
    assert first.exit_code == 0, first.output
    assert "created 15 field(s)" in first.output
    second = runner.invoke(app, ["mailerlite", "setup-fields"], env=env)
    assert second.exit_code == 0 and "created 0 field(s)" in second.output
    keys = [field["key"] for field in sandbox.state("mailerlite")["fields"]]
    assert len(keys) == len(set(keys))
    assert {"event_id", "payment_status", "crm_contact_id", "utm_campaign"} <= set(keys)
    wrong_key = runner.invoke(app, ["mailerlite", "setup-fields"], env=env | {"MAILERLITE_API_KEY": "nope"})
    assert wrong_key.exit_code == 1 and "HTTP 401" in wrong_key.output
    unset = runner.invoke(app, ["mailerlite", "setup-fields"], env=env | {"MAILERLITE_API_KEY": ""})
    assert unset.exit_code == 2 and "MAILERLITE_API_KEY" in unset.output
