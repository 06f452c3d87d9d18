"""`attribution sync stripe` and POST /v1/admin/sync/stripe: events the webhooks missed are recovered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from ingest.payments import repository as payments_repository
from ingest.store.database import Database
from sandbox import LocalStripe, Sandbox
from tests.conftest import ADMIN_TOKEN, ApiProcess, free_port, lead_body, store_query, wait_until
from tests.payments.conftest import (
    PRICE_CENTS,
    RunningApi,
    rename_table,
    serve_app,
    stripe_settings,
)

DEAD_URL = f"http://127.0.0.1:{free_port()}/v1/webhooks/stripe"
COUNTS = re.compile(r"seen (\d+)\s+new (\d+)\s+processed (\d+)\s+failed (\d+)")


def _env(tmp_path: Path, localstripe: LocalStripe, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **localstripe.env(),
        "ATTRIBUTION_DB_PATH": str(tmp_path / "attribution.duckdb"),
        "ATTRIBUTION_REPLICA_PATH": str(tmp_path / "attribution.replica.duckdb"),
        "PRODUCT_PRICE_CENTS": str(PRICE_CENTS),
        **extra,
    }


def _run_sync(env: dict[str, str], *args: str) -> tuple[int, tuple[int, ...] | None, str]:
    """Run `attribution sync stripe` as a separate process; return its exit code, counts and output."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "sync", "stripe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = COUNTS.search(done.stdout)
    return (
        done.returncode,
        tuple(int(g) for g in match.groups()) if match else None,
        done.stdout + done.stderr,
    )


def _pay_on_localstripe(localstripe: LocalStripe, payment_intent_id: str) -> None:
    client = localstripe.client()
    client.v1.payment_intents.update(payment_intent_id, params={"payment_method": "pm_card_visa"})
    assert client.v1.payment_intents.confirm(payment_intent_id).status == "succeeded"


def _lead_status_in_file(path: Path, event_id: UUID) -> tuple[str, str | None]:
    database = Database.open(path)
    try:
        row = database.read(
            lambda conn: conn.execute(
                "select status, payment_intent_id from leads where event_id = ?", [event_id]
            ).fetchone()
        )
        assert row is not None
        payment = database.read(lambda conn: payments_repository.get_payment(conn, row[1]))
    finally:
        database.close()
    return row[0], payment["status"] if payment else None


def test_sync_recovers_a_payment_made_while_the_api_was_stopped(
    tmp_path: Path, localstripe: LocalStripe, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    localstripe.flush()
    localstripe.register_webhook("attribution-tests", DEAD_URL, localstripe.webhook_secret)
    settings = stripe_settings(tmp_path, localstripe, sandbox, **store)
    with serve_app(settings) as api:
        event_id = api.create_lead()
        intent = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()
    # The API is down now: the payment happens and its webhook goes nowhere.
    _pay_on_localstripe(localstripe, intent["payment_intent_id"])
    url = store.get("attribution_database_url")
    env = _env(tmp_path, localstripe, **({"ATTRIBUTION_DATABASE_URL": url} if url else {}))

    code, counts, output = _run_sync(env)

    assert code == 0, output
    assert counts == (1, 1, 1, 0)  # seen, new, processed, failed
    assert store_query(
        settings,
        "select l.status, p.status from leads l join payments p using (payment_intent_id) where l.event_id = ?",
        [event_id],
    ) == [("paid", "succeeded")]
    code, counts, output = _run_sync(env)
    assert (code, counts) == (0, (1, 0, 0, 0)), output  # the cursor's overlap lists it again; nothing new


# The embedded file only: going through the API is what the CLI does when the API process holds the file's lock.
def test_sync_goes_through_the_running_api_when_it_holds_the_file(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    localstripe.flush()
    localstripe.register_webhook("attribution-tests", DEAD_URL, localstripe.webhook_secret)
    port = free_port()
    env = _env(
        tmp_path,
        localstripe,
        ATTRIBUTION_ADMIN_TOKEN=ADMIN_TOKEN,
        ATTRIBUTION_API_URL=f"http://127.0.0.1:{port}",
    )
    server = ApiProcess(env, port=port)
    server.start()
    try:
        response = httpx.post(f"{server.base_url}/v1/leads", json=lead_body(), timeout=30)
        event_id = UUID(response.json()["event_id"])
        intent = httpx.post(
            f"{server.base_url}/v1/payment-intents", json={"event_id": str(event_id)}, timeout=30
        ).json()
        _pay_on_localstripe(localstripe, intent["payment_intent_id"])

        no_token = {name: value for name, value in env.items() if name != "ATTRIBUTION_ADMIN_TOKEN"}
        code, counts, output = _run_sync(no_token)
        assert code == 1 and counts is None
        assert "ATTRIBUTION_ADMIN_TOKEN" in output and "/v1/admin/sync/stripe" in output

        code, counts, output = _run_sync(env)
        assert code == 0, output
        assert "through http://127.0.0.1" in output
        assert counts == (1, 1, 1, 0)
    finally:
        server.stop()
    assert _lead_status_in_file(tmp_path / "attribution.duckdb", event_id) == ("paid", "succeeded")


def test_admin_sync_retries_a_failed_event_and_clamps_the_window(
    stripe_api: RunningApi, localstripe: LocalStripe
) -> None:
    localstripe.flush()
    event_id = stripe_api.create_lead()
    intent_id = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()[
        "payment_intent_id"
    ]
    writer = stripe_api.database.writer
    writer.submit_sync(rename_table, ("payments", "payments_away"))
    try:
        _pay_on_localstripe(localstripe, intent_id)  # its webhook arrives and fails: stored with the error
        wait_until(
            lambda: stripe_api.one("select status from stripe_events") == "failed", what="failed webhook"
        )
    finally:
        writer.submit_sync(rename_table, ("payments_away", "payments"))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert stripe_api.client.post("/v1/admin/sync/stripe").status_code == 401

    response = stripe_api.client.post(
        "/v1/admin/sync/stripe", json={"since": "2000-01-01T00:00:00Z"}, headers=headers
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["seen"], report["new"], report["retried"], report["processed"], report["failed"]) == (
        1,
        0,
        1,
        1,
        0,
    )
    assert report["since"] > "2026"  # clamped to the 30 days Stripe keeps events
    assert stripe_api.one("select status from leads where event_id = ?", [event_id]) == "paid"
    assert stripe_api.rows("select status, source, processing_attempts from stripe_events") == [
        ("processed", "webhook", 2)
    ]
    again = stripe_api.client.post("/v1/admin/sync/stripe", headers=headers).json()
    assert (again["seen"], again["new"], again["processed"]) == (1, 0, 0)


def test_admin_sync_answers_502_when_stripe_is_down(stripe_api_with: Callable[..., RunningApi]) -> None:
    api = stripe_api_with(stripe_api_base=f"http://127.0.0.1:{free_port()}")
    response = api.client.post("/v1/admin/sync/stripe", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 502
    assert response.json()["error"] == "stripe_unavailable"
    assert api.one("select count(*) from stripe_sync_cursor") == 0


def test_a_failed_sync_is_reported_and_the_next_one_picks_the_event_up(
    stripe_api_with: Callable[..., RunningApi], localstripe: LocalStripe
) -> None:
    localstripe.flush()
    api = stripe_api_with()
    localstripe.register_webhook("attribution-tests", DEAD_URL, localstripe.webhook_secret)
    event_id = api.create_lead()
    intent_id = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()[
        "payment_intent_id"
    ]
    _pay_on_localstripe(localstripe, intent_id)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    writer = api.database.writer
    writer.submit_sync(rename_table, ("payments", "payments_away"))
    try:
        failed = api.client.post("/v1/admin/sync/stripe", headers=headers).json()
    finally:
        writer.submit_sync(rename_table, ("payments_away", "payments"))
    assert (failed["seen"], failed["new"], failed["processed"], failed["failed"]) == (1, 1, 0, 1)
    assert api.rows("select status, source from stripe_events") == [("failed", "sync")]
    assert api.one("select status from leads where event_id = ?", [event_id]) == "lead"

    recovered = api.client.post("/v1/admin/sync/stripe", headers=headers).json()

    assert (recovered["seen"], recovered["retried"], recovered["processed"], recovered["failed"]) == (
        1,
        1,
        1,
        0,
    )
    assert api.one("select status from leads where event_id = ?", [event_id]) == "paid"
