"""Meta Conversions API through the outbox, against the strict Meta fake over loopback HTTP, on each engine."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.core.clock import utcnow
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.leads.consent import RequestContext, consent_row, record_consents
from ingest.leads.schemas import ConsentIn, LeadIn
from ingest.outbox.destinations.meta import normalise_email_for_meta, normalise_phone_for_meta
from ingest.outbox.replay import DeliveryFilter, ReplayRequest, replay_deliveries
from ingest.store.database import Database
from sandbox import Sandbox
from sandbox.fakes import META_ACCESS_TOKEN, META_PIXEL_ID
from tests.conftest import lead_body
from tests.outbox.conftest import (
    async_wait_until,
    attempt_rows,
    capture,
    delivery_rows,
    queue,
    running_worker,
    sandbox_settings,
)

FBP = "fb.1.1712345678901.1098765432"
FBC = "fb.1.1712345678901.IwAR2xYz_fbclid-value"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _meta_rows(database: Database, status: str | None = None) -> list[dict[str, Any]]:
    where = "destination = 'meta'" + (" and status = ?" if status else "")
    return delivery_rows(database, where, [status] if status else [])


def _session(database: Database, event_id: uuid.UUID) -> uuid.UUID:
    row = database.read(
        lambda c: c.execute("select user_session_id from leads where event_id = ?", [event_id]).fetchone()
    )
    assert row is not None
    return uuid.UUID(str(row[0]))


async def _queue_purchase(
    database: Database,
    settings: Any,
    event_id: uuid.UUID,
    *,
    happened_days_ago: float = 0,
    pi: str = "pi_meta1",
) -> None:
    await queue(
        database,
        settings,
        destination=Destination.META,
        kind=DeliveryKind.PURCHASE,
        event_id=event_id,
        user_session_id=_session(database, event_id),
        key_suffix=pi,
        payload={
            "transaction_id": pi,
            "value": 47.0,
            "currency": "eur",
            "event_time": (utcnow() - timedelta(days=happened_days_ago)).isoformat(),
        },
    )


def test_meta_normalises_email_by_trim_and_case_only_and_phone_to_digits() -> None:
    assert (
        normalise_email_for_meta("  Ana.Teste@GMail.com ") == "ana.teste@gmail.com"
    )  # dots kept, unlike GA4
    assert normalise_phone_for_meta("+351912345678") == "351912345678"


def test_a_malformed_fbp_or_fbc_is_dropped_and_never_costs_the_lead() -> None:
    lead = LeadIn(**lead_body(fbp=FBP, fbc="not-a-cookie<script>"))
    assert (lead.fbp, lead.fbc) == (FBP, None)


async def test_lead_and_purchase_reach_meta_hashed_with_the_journeys_event_id(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, meta_test_event_code="TEST4242")
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings, fbp=FBP, fbc=FBC, email=" Ana.Teste@Example.com")
        await _queue_purchase(database, settings, event_id)
        worker.wake()
        await async_wait_until(lambda: len(_meta_rows(database, "delivered")) == 2)
        session = _session(database, event_id)
    requests = sandbox.requests("meta")
    assert [r.status for r in requests] == [200, 200]
    assert {r.path for r in requests} == {f"/v21.0/{META_PIXEL_ID}/events"}
    assert {r.query["access_token"] for r in requests} == {META_ACCESS_TOKEN}
    for request in requests:  # no raw PII ever leaves: not the email, the phone, the name or the session id
        for raw in ("ana.teste@example.com", "912345678", "Ana Teste", str(session)):
            assert raw not in request.raw_body.lower()
    events = {event["event_name"]: event for event in sandbox.state("meta")["events"]}
    assert set(events) == {"Lead", "Purchase"}
    for event in events.values():
        assert event["event_id"] == str(event_id)
        assert event["action_source"] == "website"
        assert event["event_source_url"] == "https://cafecomvendas.example/lisbon?utm_source=instagram"
        assert event["test_event_code"] == "TEST4242"
        assert abs(event["event_time"] - time.time()) < 120
        assert event["user_data"] == {
            "em": [_sha("ana.teste@example.com")],
            "ph": [_sha("351912345678")],
            "external_id": [_sha(str(session))],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "pytest",
            "fbp": FBP,
            "fbc": FBC,
        }
    assert events["Purchase"]["custom_data"] == {
        "currency": "EUR",
        "value": 47.0,
        "order_id": "pi_meta1",
        "content_ids": [settings.product_id],
        "content_type": "product",
    }
    assert "value" not in events["Lead"]["custom_data"]
    assert sandbox.state("meta")["duplicates"] == 0


async def test_without_marketing_consent_meta_is_suppressed_and_the_browser_ids_are_not_kept(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings, marketing_consent=False, fbp=FBP, fbc=FBC)
        await _queue_purchase(database, settings, event_id)
        worker.wake()
        await async_wait_until(lambda: len(_meta_rows(database, "suppressed")) == 2)
        kept = database.read(lambda c: c.execute("select fbp, fbc from leads").fetchone())
        rows = _meta_rows(database)
    assert kept == (None, None)
    assert {(r["kind"], r["reason"]) for r in rows} == {
        ("generate_lead", "no marketing consent"),
        ("purchase", "no marketing consent"),
    }
    assert sandbox.requests("meta") == []


async def test_a_withdrawal_suppresses_what_meta_has_not_received_yet(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, attribution_circuit_breaker_threshold=100)
    sandbox.set_faults("meta", fail_5xx_until=time.time() + 60)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: sandbox.requests("meta"))
        session = _session(database, event_id)
        withdrawal = ConsentIn(
            user_session_id=session,
            marketing_consent=False,
            analytics_consent=True,
            consent_method="modal",
            consent_version="1.0",
        )
        context = RequestContext(received_at=utcnow(), ip="203.0.113.7", user_agent="pytest")
        row = consent_row(
            settings, withdrawal, user_session_id=session, event_id=None, source="consent", context=context
        )
        await database.writer.submit(record_consents, row)
        sandbox.set_faults("meta", clear=True)
        # Planned after the withdrawal, as a payment webhook would plan it: gated again at send time.
        await _queue_purchase(database, settings, event_id)
        worker.wake()
        await async_wait_until(lambda: len(_meta_rows(database, "suppressed")) == 2)
        rows = {r["kind"]: r for r in _meta_rows(database)}
    assert rows["generate_lead"]["reason"] == "consent withdrawn"
    assert rows["purchase"]["reason"] == "no marketing consent" and rows["purchase"]["attempt_count"] == 0
    assert all(r.status == 503 for r in sandbox.requests("meta"))
    assert sandbox.state("meta")["events"] == []


async def test_an_event_older_than_seven_days_is_dead_at_once_and_never_sent(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(settings) as (database, worker):
        event_id = await capture(database, settings)
        await _queue_purchase(database, settings, event_id, happened_days_ago=7.2, pi="pi_old")
        await _queue_purchase(database, settings, event_id, happened_days_ago=6.5, pi="pi_recent")
        worker.wake()
        await async_wait_until(
            lambda: len(_meta_rows(database, "delivered")) == 2 and _meta_rows(database, "dead")
        )
        (dead,) = _meta_rows(database, "dead")
        attempts = attempt_rows(database, dead["delivery_id"])
    assert dead["idempotency_key"].endswith(":pi_old")
    assert "older than the 7 days Meta accepts" in dead["reason"]
    assert [(a["outcome"], a["status_code"]) for a in attempts] == [("dead", None)]  # no retry, no request
    orders = [e["custom_data"].get("order_id") for e in sandbox.state("meta")["events"]]
    assert orders.count("pi_recent") == 1 and "pi_old" not in orders


@pytest.mark.parametrize("code", [4, 17, 32, 613])
async def test_metas_throttling_codes_are_retried_with_backoff(
    tmp_path: Path, sandbox: Sandbox, code: int, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.meta.throttle(code, count=2)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: _meta_rows(database, "delivered"))
        (row,) = _meta_rows(database)
        attempts = attempt_rows(database, row["delivery_id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [
        (400, "retrying"),
        (400, "retrying"),
        (200, "delivered"),
    ]
    assert f"Meta throttling, error {code}" in attempts[0]["error"]
    gap = (attempts[2]["started_at"] - attempts[1]["started_at"]).total_seconds()
    assert gap >= settings.dlq_backoff_base_seconds * settings.dlq_backoff_multiplier
    assert row["failure_count"] == 2 and len(sandbox.state("meta")["events"]) == 1


async def test_another_meta_4xx_is_permanent_and_a_replay_sends_it_once_fixed(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    wrong = sandbox_settings(tmp_path, sandbox, **store, meta_access_token="expired-token")
    async with running_worker(wrong) as (database, worker):
        event_id = await capture(database, wrong)
        worker.wake()
        await async_wait_until(lambda: _meta_rows(database, "dead"))
        (row,) = _meta_rows(database)
        attempts = attempt_rows(database, row["delivery_id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(400, "dead")]
    assert "Invalid OAuth access token" in row["reason"] and '"code":190' in attempts[0]["response_body"]

    fixed = sandbox_settings(tmp_path, sandbox, **store)
    async with running_worker(fixed) as (database, worker):
        replayed = await database.writer.submit(
            replay_deliveries, ReplayRequest(DeliveryFilter(destination=Destination.META), utcnow())
        )
        worker.wake()
        await async_wait_until(lambda: _meta_rows(database, "delivered"))
        attempts = attempt_rows(database, row["delivery_id"])
    assert replayed == 1
    assert [a["outcome"] for a in attempts] == ["dead", "delivered"]  # history kept
    assert [e["event_id"] for e in sandbox.state("meta")["events"]] == [str(event_id)]


async def test_fewer_events_received_than_sent_is_a_failure_with_metas_message(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store)
    sandbox.meta.drop_events(1)
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        await async_wait_until(lambda: _meta_rows(database, "delivered"))
        (row,) = _meta_rows(database)
        attempts = attempt_rows(database, row["delivery_id"])
    first, second = attempts
    assert (first["status_code"], first["outcome"]) == (200, "retrying")
    assert first["error"].startswith("Meta received 0 of 1 events")
    assert "sandbox drop_events" in first["error"] and '"events_received":0' in first["response_body"]
    assert second["outcome"] == "delivered" and len(sandbox.state("meta")["events"]) == 1


async def test_meta_without_a_pixel_id_and_token_is_recorded_disabled(
    tmp_path: Path, sandbox: Sandbox, store: dict[str, Any]
) -> None:
    settings = sandbox_settings(tmp_path, sandbox, **store, meta_pixel_id=None)
    assert settings.destinations_enabled()["meta"] is False
    async with running_worker(settings) as (database, worker):
        await capture(database, settings)
        worker.wake()
        (row,) = _meta_rows(database)
    assert (row["status"], row["reason"]) == ("disabled", "meta is not configured")
    assert sandbox.requests("meta") == []
