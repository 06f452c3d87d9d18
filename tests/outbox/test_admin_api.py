"""Forwarding through the real API over loopback HTTP: inline lead answers, withdrawal, dead letters, replay."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from sandbox import Sandbox
from tests.conftest import ADMIN_TOKEN, lead_body, serve, wait_until
from tests.outbox.conftest import sandbox_settings, subscriber_requests

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _deliveries(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/admin/deliveries", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def test_lead_answer_carries_subscriber_and_contact_ids_when_delivered_in_time(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_inline_delivery_ms=3000)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:
        answer = api.post("/v1/leads", json=lead_body()).json()
        again = api.post("/v1/leads", json=lead_body(event_id=answer["event_id"])).json()
    subscriber = sandbox.state("mailerlite")["subscribers"]["ana.teste@example.com"]["id"]
    contact = sandbox.state("crm")["contacts"]["ana.teste@example.com"]["contact_id"]
    assert answer["mailerlite"] == {"status": "delivered", "subscriber_id": subscriber}
    assert answer["crm"] == {"status": "delivered", "contact_id": contact}
    assert again["duplicate"] is True and again["crm"]["contact_id"] == contact
    assert len(sandbox.requests("crm")) == 1 and len(subscriber_requests(sandbox)) == 1


def test_lead_answer_is_queued_when_a_destination_is_slower_than_the_inline_wait(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # The CRM is down for the whole inline wait; the wait is long enough for MailerLite on a busy machine.
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_inline_delivery_ms=3000)
    sandbox.set_faults("crm", fail_5xx_until=time.time() + 600)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:
        answer = api.post("/v1/leads", json=lead_body()).json()
        assert answer["crm"] == {"status": "queued"}
        assert answer["mailerlite"]["status"] == "delivered"
        sandbox.set_faults("crm", clear=True)
        wait_until(lambda: _deliveries(api, destination="crm", status="delivered"))


def test_consent_withdrawal_over_http_unsubscribes_an_existing_subscriber(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:
        lead = api.post("/v1/leads", json=lead_body()).json()
        wait_until(lambda: len(_deliveries(api, status="delivered")) == 4)
        withdrawal = {
            "user_session_id": lead["user_session_id"],
            "event_id": lead["event_id"],
            "marketing_consent": False,
            "analytics_consent": False,
            "consent_method": "modal",
            "consent_version": "1.0",
        }
        assert api.post("/v1/consent", json=withdrawal).status_code == 200
        wait_until(lambda: any(d["kind"] == "unsubscribe" for d in _deliveries(api, status="delivered")))
        (unsubscribe,) = [d for d in _deliveries(api, destination="mailerlite") if d["kind"] == "unsubscribe"]
    assert unsubscribe["purpose"] == "contact"
    assert sandbox.state("mailerlite")["subscribers"]["ana.teste@example.com"]["status"] == "unsubscribed"


def test_dead_letters_are_listed_by_filter_and_replayed_with_history(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.set_faults("crm", reject_status=400)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:
        leads = [api.post("/v1/leads", json=lead_body(email=f"b{n}@example.com")).json() for n in range(3)]
        wait_until(lambda: len(_deliveries(api, status="dead")) == 3)
        dead = _deliveries(api, status="dead", destination="crm", error="HTTP 400")
        assert {d["event_id"] for d in dead} == {lead["event_id"] for lead in leads}
        assert _deliveries(api, status="dead", error="no such error text") == []
        assert len(_deliveries(api, event_id=leads[0]["event_id"])) == 4
        assert _deliveries(api, status="dead", since="2099-01-01T00:00:00Z") == []

        dry = api.post("/v1/admin/deliveries/replay", json={"dry_run": True}, headers=ADMIN).json()
        assert dry == {"replayed": 3, "dry_run": True}
        assert _deliveries(api, status="dead") != []  # a dry run changes nothing

        sandbox.set_faults("crm", clear=True)
        one = api.post("/v1/admin/deliveries/replay", json={"ids": [dead[0]["delivery_id"]]}, headers=ADMIN)
        assert one.json() == {"replayed": 1, "dry_run": False}
        rest = api.post("/v1/admin/deliveries/replay", json={"destination": "crm"}, headers=ADMIN).json()
        assert rest["replayed"] == 2
        wait_until(lambda: len(_deliveries(api, destination="crm", status="delivered")) == 3)
        detail = api.get(f"/v1/admin/deliveries/{dead[0]['delivery_id']}", headers=ADMIN).json()
    assert [(a["attempt_number"], a["status_code"]) for a in detail["attempts"]] == [(1, 400), (2, 200)]
    assert detail["failure_count"] == 0 and detail["attempt_count"] == 2


def test_admin_delivery_endpoints_refuse_bad_input_and_missing_tokens(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:
        assert api.get("/v1/admin/deliveries").status_code == 401
        assert api.post("/v1/admin/deliveries/replay", json={}).status_code == 401
        bad = [
            {"status": "lost"},
            {"destination": "fax"},
            {"ids": ["not-a-uuid"]},
            {"ids": []},
            {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            {"surprise": 1},
        ]
        for body in bad:
            response = api.post("/v1/admin/deliveries/replay", json=body, headers=ADMIN)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"] == "invalid_request"
        assert api.get("/v1/admin/deliveries", params={"limit": 0}, headers=ADMIN).status_code == 422
        assert api.get("/v1/admin/deliveries", params={"status": "x"}, headers=ADMIN).status_code == 422
        missing = api.get(f"/v1/admin/deliveries/{uuid.uuid4()}", headers=ADMIN)
        assert missing.status_code == 404
        unknown = api.post("/v1/admin/deliveries/replay", json={"ids": [str(uuid.uuid4())]}, headers=ADMIN)
        assert unknown.json() == {"replayed": 0, "dry_run": False}
        worker = api.get("/v1/admin/worker", headers=ADMIN).json()
        assert worker["running"] and worker["destinations"]["crm"]["breaker"] == "closed"


def test_an_idle_api_commits_nothing_between_polls(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    # Every commit makes the replica publisher copy the whole database, so an idle poll must not write.
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_delivery_poll_seconds=0.05)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as api:

        def committed() -> int:
            response = api.get("/v1/admin/status", headers=ADMIN)
            assert response.status_code == 200, response.text
            return int(response.json()["writer"]["batches_committed"])

        api.post("/v1/leads", json=lead_body())
        wait_until(lambda: len(_deliveries(api, status="delivered")) == 4)
        time.sleep(0.3)  # the claim after the last send (which finds nothing) may still be committing
        before = committed()
        time.sleep(0.5)  # ten poll intervals
        assert committed() == before
