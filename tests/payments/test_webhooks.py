"""POST /v1/webhooks/stripe: verification, exactly-once processing, late and out-of-order events, failures."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import duckdb
import httpx
import pytest

from ingest.payments import repository as payments_repository
from ingest.reconcile.models import ModelParams, load_models
from ingest.reconcile.postgres_tables import copy_postgres
from sandbox import Sandbox
from sandbox.fakes import MAILERLITE_API_KEY
from tests.conftest import ADMIN_TOKEN, wait_until
from tests.payments import events
from tests.payments.conftest import PRICE_CENTS, RunningApi, rename_table


def _payment(api: RunningApi, payment_intent_id: str) -> dict[str, Any]:
    payment = api.database.read(lambda conn: payments_repository.get_payment(conn, payment_intent_id))
    assert payment is not None, f"no payment {payment_intent_id}"
    return payment


def _deliveries(api: RunningApi, event_id: UUID) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """A lead's payment deliveries keyed by (kind, idempotency-key suffix) → (status, payload); Meta's Purchase,
    which shares sGTM's kind and suffix, is checked in test_meta_purchase."""
    rows = api.rows(
        "select kind, idempotency_key, status, payload from deliveries "
        "where event_id = ? and idempotency_key like '%:%:%:%' and destination <> 'meta'",
        [event_id],
    )
    result = {}
    for kind, key, status, payload in rows:
        suffix = key.split(":", 3)[3]
        assert (kind, suffix) not in result
        result[(kind, suffix)] = (status, json.loads(payload))
    return result


def _modelled(api: RunningApi, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of a query over the SQL models (DuckDB SQL): on the live embedded file, or on a copy of the PostgreSQL
    store like the warehouse's (the models never run on PostgreSQL itself)."""

    def query(conn: Any) -> list[tuple[Any, ...]]:
        load_models(conn, ModelParams.from_settings(api.settings), temporary=True)
        rows: list[tuple[Any, ...]] = conn.execute(sql, params or []).fetchall()
        return rows

    if api.database.engine == "duckdb":
        return api.database.read(query)
    url = api.settings.attribution_database_url.get_secret_value()  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="modelled-") as folder:
        copy_postgres(url, Path(folder) / "copy.duckdb")
        conn = duckdb.connect(str(Path(folder) / "copy.duckdb"))
        try:
            return query(conn)
        finally:
            conn.close()


def _lead_status(api: RunningApi, event_id: UUID) -> str:
    return str(api.one("select status from leads where event_id = ?", [event_id]))


def _event_row(api: RunningApi, stripe_event_id: str) -> tuple[Any, ...] | None:
    rows = api.rows(
        "select status, error, processing_attempts, duplicate_of from stripe_events where stripe_event_id = ?",
        [stripe_event_id],
    )
    return rows[0] if rows else None


# --- bad input ---------------------------------------------------------------------------------------------


def _tampered(api: RunningApi, secret: str) -> httpx.Response:
    text, headers = events.signed(events.succeeded(events.new_id("pi")), secret)
    return api.client.post("/v1/webhooks/stripe", content=text.replace("4700", "1"), headers=headers)


def _wrong_secret(api: RunningApi, secret: str) -> httpx.Response:
    return api.post_event(events.succeeded(events.new_id("pi")), secret="whsec_not_ours")


def _old_timestamp(api: RunningApi, secret: str) -> httpx.Response:
    return api.post_event(events.succeeded(events.new_id("pi")), timestamp=int(time.time()) - 301)


def _missing_header(api: RunningApi, secret: str) -> httpx.Response:
    return api.client.post("/v1/webhooks/stripe", content=json.dumps(events.succeeded(events.new_id("pi"))))


def _garbled_header(api: RunningApi, secret: str) -> httpx.Response:
    body = json.dumps(events.succeeded(events.new_id("pi")))
    return api.client.post("/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": "t=abc,v1"})


def _not_json(api: RunningApi, secret: str) -> httpx.Response:
    return api.post_event("this is not json {", secret=secret)


def _json_array(api: RunningApi, secret: str) -> httpx.Response:
    return api.post_event("[1, 2, 3]", secret=secret)


def _not_utf8(api: RunningApi, secret: str) -> httpx.Response:
    body = b'{"id": "evt_\xff"}'
    header = events.stripe.WebhookSignature.generate_signature_header(body.decode("latin-1"), secret)
    return api.client.post("/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": header})


def _no_event_id(api: RunningApi, secret: str) -> httpx.Response:
    body = events.succeeded(events.new_id("pi"))
    del body["id"]
    return api.post_event(body, secret=secret)


def _nested_too_deep(api: RunningApi, secret: str) -> httpx.Response:
    # Deep enough to make a recursive JSON parser raise RecursionError; well inside the body limit.
    body = json.dumps(events.succeeded(events.new_id("pi")))
    return api.post_event(body[:-1] + ', "padding": ' + "[" * 5000 + "]" * 5000 + "}", secret=secret)


def _oversized(api: RunningApi, secret: str) -> httpx.Response:
    body = events.succeeded(events.new_id("pi"))
    body["data"]["object"]["metadata"]["padding"] = "x" * 70_000
    return api.post_event(body, secret=secret)


@pytest.mark.parametrize(
    ("send", "status"),
    [
        (_tampered, 400),
        (_wrong_secret, 400),
        (_old_timestamp, 400),
        (_missing_header, 400),
        (_garbled_header, 400),
        (_not_json, 400),
        (_json_array, 400),
        (_not_utf8, 400),
        (_no_event_id, 400),
        (_nested_too_deep, 400),
        (_oversized, 413),
    ],
)
def test_bad_deliveries_are_refused_and_nothing_is_recorded(
    stripe_api: RunningApi, send: Callable[[RunningApi, str], httpx.Response], status: int
) -> None:
    secret = stripe_api.settings.stripe_webhook_secret.get_secret_value()  # type: ignore[union-attr]
    response = send(stripe_api, secret)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert stripe_api.one("select count(*) from stripe_events") == 0
    assert stripe_api.one("select count(*) from payments") == 0


# --- poison events: signed, but never processable ----------------------------------------------------------


def _without_data_object(body: dict[str, Any]) -> None:
    del body["data"]["object"]


def _without_object_id(body: dict[str, Any]) -> None:
    del body["data"]["object"]["id"]


def _amount_as_text(body: dict[str, Any]) -> None:
    body["data"]["object"]["amount"] = "47.00"
    body["data"]["object"]["amount_received"] = None


def _created_in_year_10000(body: dict[str, Any]) -> None:
    body["created"] = 253_402_300_800  # 10000-01-01: `ValueError: year 10000 is out of range` before


def _amount_beyond_bigint(body: dict[str, Any]) -> None:
    body["data"]["object"]["amount"] = body["data"]["object"]["amount_received"] = 2**64  # INT128 before


def _currency_not_a_code(body: dict[str, Any]) -> None:
    body["data"]["object"]["currency"] = "euros"


def _unknown_intent_status(body: dict[str, Any]) -> None:
    body["data"]["object"]["status"] = "teleported"


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_without_data_object, "data.object"),
        (_without_object_id, "data.object.id"),
        (_amount_as_text, "data.object.amount"),
        (_created_in_year_10000, "created"),
        (_amount_beyond_bigint, "data.object.amount"),
        (_currency_not_a_code, "data.object.currency"),
        (_unknown_intent_status, "data.object.status"),
    ],
)
def test_a_signed_event_that_can_never_be_processed_is_kept_as_rejected_and_acknowledged(
    stripe_api: RunningApi, spoil: Callable[[dict[str, Any]], None], reason: str
) -> None:
    event_id = stripe_api.create_lead()
    body = events.succeeded(events.new_id("pi"), event_id)
    spoil(body)

    first = stripe_api.post_event(body)
    again = stripe_api.post_event(body)  # Stripe's retry

    assert first.status_code == 200, first.text
    answer = first.json()
    assert (answer["received"], answer["duplicate"], answer["status"]) == (True, False, "rejected")
    assert reason in answer["reason"]
    assert again.status_code == 200
    assert again.json() | {"reason": None} == {
        "received": True, "duplicate": True, "status": "rejected", "reason": None,
    }  # fmt: skip
    status, error, attempts, _ = _event_row(stripe_api, body["id"])  # type: ignore[misc]
    assert (status, error, attempts) == ("rejected", answer["reason"], 1)
    assert stripe_api.one("select count(*) from payments") == 0  # nothing half-written
    assert stripe_api.one("select count(*) from deliveries where kind = 'purchase'") == 0
    assert _lead_status(stripe_api, event_id) == "lead"


def test_a_rejected_event_counts_as_a_webhook_failure_in_the_models(stripe_api: RunningApi) -> None:
    # One spoiled event is enough here: the models read the stored status, whatever made it rejected.
    body = events.succeeded(events.new_id("pi"), stripe_api.create_lead())
    _currency_not_a_code(body)
    answer = stripe_api.post_event(body).json()
    assert answer["status"] == "rejected"
    staged = _modelled(
        stripe_api,
        "select processing_status, processing_error, is_failed, is_rejected from stg_stripe_events",
    )
    assert staged == [("rejected", answer["reason"], True, True)]
    resilience = _modelled(stripe_api, "select numerator, denominator, met from system_resilience")
    assert resilience == [(1, 1, False)]
    # Live on the embedded file; on PostgreSQL from a fresh copy (no warehouse has published a replica here).
    metrics = stripe_api.client.get("/v1/metrics/success", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    served = next(m for m in metrics.json() if m["metric"] == "system_resilience")
    assert (served["numerator"], served["denominator"], served["met"]) == (1, 1, False)


def test_webhooks_answer_503_when_no_secret_is_configured(stripe_api_with: Callable[..., RunningApi]) -> None:
    api = stripe_api_with(stripe_webhook_secret="   ")
    response = api.post_event(events.succeeded(events.new_id("pi")), secret="whsec_anything")
    assert response.status_code == 503
    assert response.json()["error"] == "not_configured"
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["message"]
    assert api.one("select count(*) from stripe_events") == 0


# --- processing --------------------------------------------------------------------------------------------


def test_succeeded_marks_the_lead_paid_with_its_outbox_rows(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    body = events.succeeded(pi, event_id)

    response = stripe_api.post_event(body)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False, "status": "processed"}
    assert _lead_status(stripe_api, event_id) == "paid"
    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["amount_cents"], payment["is_orphan"]) == (
        "succeeded",
        PRICE_CENTS,
        False,
    )
    assert stripe_api.one("select payment_intent_id from leads where event_id = ?", [event_id]) == pi
    deliveries = _deliveries(stripe_api, event_id)
    assert set(deliveries) == {("contact_upsert", "paid"), ("subscriber_upsert", "paid"), ("purchase", pi)}
    assert deliveries[("contact_upsert", "paid")][1] == {
        "lead_status": "paid", "amount_cents": PRICE_CENTS, "currency": "eur", "payment_intent_id": pi,
    }  # fmt: skip
    assert deliveries[("subscriber_upsert", "paid")][1] == {"payment_status": "paid"}
    assert deliveries[("purchase", pi)][1] == {"transaction_id": pi, "value": 47.0, "currency": "eur"}
    assert all(status != "suppressed" for status, _ in deliveries.values())
    row = _event_row(stripe_api, body["id"])
    assert row is not None and row[0] == "processed" and row[2] == 1


def test_analytics_and_marketing_follow_the_consent_in_force(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead(marketing_consent=True, analytics_consent=True)
    session = stripe_api.one("select user_session_id from leads where event_id = ?", [event_id])
    withdrawn = stripe_api.client.post(
        "/v1/consent",
        json={
            "user_session_id": str(session),
            "marketing_consent": False,
            "analytics_consent": False,
            "consent_method": "modal",
            "consent_version": "1.0",
        },
    )
    assert withdrawn.status_code == 200
    pi = events.new_id("pi")

    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200

    deliveries = _deliveries(stripe_api, event_id)
    assert deliveries[("purchase", pi)][0] == "suppressed"
    assert deliveries[("subscriber_upsert", "paid")][0] == "suppressed"
    assert deliveries[("contact_upsert", "paid")][0] != "suppressed"  # the CRM is the business's own record


def test_a_repeated_event_is_processed_once(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    body = events.succeeded(events.new_id("pi"), event_id)

    first = stripe_api.post_event(body)
    second = stripe_api.post_event(body)

    assert first.json() == {"received": True, "duplicate": False, "status": "processed"}
    assert second.status_code == 200
    assert second.json() == {"received": True, "duplicate": True, "status": "processed"}
    assert len(_deliveries(stripe_api, event_id)) == 3
    assert _event_row(stripe_api, body["id"])[2] == 1  # type: ignore[index]


def test_twenty_concurrent_copies_are_processed_once(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    text, headers = events.signed(
        events.succeeded(events.new_id("pi"), event_id),
        stripe_api.settings.stripe_webhook_secret.get_secret_value(),
    )  # type: ignore[union-attr]
    url = stripe_api.webhook_url

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(url, content=text, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(deliver, range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 19
    assert stripe_api.one("select count(*) from stripe_events") == 1
    assert len(_deliveries(stripe_api, event_id)) == 3


def test_two_event_objects_for_one_change_are_processed_once(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    first, second = events.succeeded(pi, event_id), events.succeeded(pi, event_id)

    assert stripe_api.post_event(first).json()["duplicate"] is False
    answer = stripe_api.post_event(second)

    assert answer.status_code == 200 and answer.json()["duplicate"] is True
    assert _event_row(stripe_api, second["id"]) == ("duplicate", None, 0, first["id"])
    assert len(_deliveries(stripe_api, event_id)) == 3


def test_an_unhandled_type_is_stored_and_acknowledged(stripe_api: RunningApi) -> None:
    body = events.event("customer.created", {"id": events.new_id("cus"), "object": "customer", "email": None})

    response = stripe_api.post_event(body)

    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert _event_row(stripe_api, body["id"])[0] == "ignored"  # type: ignore[index]
    assert stripe_api.post_event(body).json()["duplicate"] is True


def test_a_refund_before_the_success_still_ends_refunded(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    created = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(event_id)})
    assert created.status_code == 200
    pi = created.json()["payment_intent_id"]

    # The refund's Charge carries no metadata: the PaymentIntent our checkout linked names the lead.
    assert stripe_api.post_event(events.refunded(pi)).status_code == 200
    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200

    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["refunded_cents"], payment["is_orphan"]) == (
        "refunded",
        PRICE_CENTS,
        False,
    )
    assert payment["succeeded_at"] is not None and payment["refunded_at"] is not None
    assert _lead_status(stripe_api, event_id) == "refunded"
    deliveries = _deliveries(stripe_api, event_id)
    # The CRM and MailerLite hold a state and get the final one; sGTM gets both events, purchase and refund.
    assert set(deliveries) == {
        ("contact_upsert", "refunded"), ("subscriber_upsert", "refunded"), ("purchase", pi), ("refund", pi),
    }  # fmt: skip
    kinds = stripe_api.rows(
        "select kind, payload from deliveries where destination = 'sgtm' and event_id = ? and kind <> 'generate_lead' order by kind",
        [event_id],
    )
    assert [(kind, json.loads(payload)["value"]) for kind, payload in kinds] == [
        ("purchase", 47.0),
        ("refund", 47.0),
    ]


def test_a_refund_heard_of_before_anything_else_is_matched_when_the_success_arrives(
    stripe_api: RunningApi,
) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")

    assert stripe_api.post_event(events.refunded(pi)).status_code == 200
    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["is_orphan"], payment["event_id"]) == ("refunded", True, None)

    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200

    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["is_orphan"], payment["event_id"]) == ("refunded", False, event_id)
    assert _lead_status(stripe_api, event_id) == "refunded"
    assert {
        ("contact_upsert", "refunded"),
        ("subscriber_upsert", "refunded"),
        ("purchase", pi),
        ("refund", pi),
    } == set(_deliveries(stripe_api, event_id))


def test_a_refund_after_the_success_moves_the_lead_to_refunded(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200
    charge = events.new_id("ch")

    partial = stripe_api.post_event(events.refunded(pi, charge_id=charge, amount_refunded=1000))
    assert partial.status_code == 200
    assert (_payment(stripe_api, pi)["status"], _payment(stripe_api, pi)["refunded_cents"]) == (
        "succeeded",
        1000,
    )
    assert _lead_status(stripe_api, event_id) == "paid"

    full = stripe_api.post_event(events.refunded(pi, charge_id=charge))
    assert full.status_code == 200 and full.json()["duplicate"] is False

    assert _payment(stripe_api, pi)["status"] == "refunded"
    assert _lead_status(stripe_api, event_id) == "refunded"
    deliveries = _deliveries(stripe_api, event_id)
    assert {
        ("contact_upsert", "paid"),
        ("contact_upsert", "refunded"),
        ("subscriber_upsert", "paid"),
        ("subscriber_upsert", "refunded"),
    } <= set(deliveries)
    assert deliveries[("contact_upsert", "refunded")][1]["lead_status"] == "refunded"


def test_a_late_failure_does_not_undo_a_success(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    failed = events.event(
        "payment_intent.payment_failed",
        events.payment_intent_object(
            pi,
            status="requires_payment_method",
            metadata={"event_id": str(event_id)},
            decline_code="insufficient_funds",
        ),
    )
    canceled = events.event(
        "payment_intent.canceled",
        events.payment_intent_object(pi, status="canceled", metadata={"event_id": str(event_id)}),
    )

    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200
    assert stripe_api.post_event(failed).status_code == 200
    assert stripe_api.post_event(canceled).status_code == 200

    assert _payment(stripe_api, pi)["status"] == "succeeded"
    assert _lead_status(stripe_api, event_id) == "paid"


def test_a_failure_then_a_success_ends_paid(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    failed = events.event(
        "payment_intent.payment_failed",
        events.payment_intent_object(
            pi,
            status="requires_payment_method",
            metadata={"event_id": str(event_id)},
            decline_code="insufficient_funds",
        ),
    )

    assert stripe_api.post_event(failed).status_code == 200
    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["failure_code"]) == ("failed", "insufficient_funds")
    assert _lead_status(stripe_api, event_id) == "lead"
    assert _deliveries(stripe_api, event_id) == {}

    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200
    assert _payment(stripe_api, pi)["status"] == "succeeded"
    assert _lead_status(stripe_api, event_id) == "paid"


def _failed(pi: str, event_id: UUID) -> dict[str, Any]:
    return events.event(
        "payment_intent.payment_failed",
        events.payment_intent_object(
            pi,
            status="requires_payment_method",
            metadata={"event_id": str(event_id)},
            decline_code="expired_card",
        ),
    )


def test_concurrent_changes_of_different_kinds_each_keep_their_own_state(stripe_api: RunningApi) -> None:
    # Events sharing a writer batch update only the columns the batch changed: each row must still get its own.
    journeys = [(stripe_api.create_lead(), events.new_id("pi")) for _ in range(6)]
    for event_id, pi in journeys:
        assert stripe_api.post_event(_failed(pi, event_id)).status_code == 200
    canceled = [
        events.event(
            "payment_intent.canceled",
            events.payment_intent_object(pi, status="canceled", metadata={"event_id": str(event_id)}),
        )
        for event_id, pi in journeys
    ]
    second = [
        events.succeeded(pi, event_id) if n % 2 else canceled[n] for n, (event_id, pi) in enumerate(journeys)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert [r.status_code for r in pool.map(stripe_api.post_event, second)] == [200] * 6

    for n, (event_id, pi) in enumerate(journeys):
        payment = _payment(stripe_api, pi)
        if n % 2:
            assert (payment["status"], payment["failure_code"], payment["amount_cents"]) == (
                "succeeded", "expired_card", PRICE_CENTS,
            )  # fmt: skip
            assert payment["succeeded_at"] is not None and _lead_status(stripe_api, event_id) == "paid"
        else:
            assert (payment["status"], payment["failure_code"], payment["succeeded_at"]) == (
                "canceled", "expired_card", None,
            )  # fmt: skip
            assert _lead_status(stripe_api, event_id) == "lead"
        assert payment["last_stripe_event_id"] == second[n]["id"]
        assert (payment["event_id"], payment["is_orphan"]) == (event_id, False)


@pytest.mark.parametrize("metadata_event_id", [uuid4(), "not-a-uuid", None])
def test_a_payment_naming_no_known_lead_is_kept_as_an_orphan(
    stripe_api: RunningApi, metadata_event_id: object
) -> None:
    pi = events.new_id("pi")

    response = stripe_api.post_event(events.succeeded(pi, metadata_event_id))

    assert response.status_code == 200
    payment = _payment(stripe_api, pi)
    assert (payment["status"], payment["is_orphan"], payment["amount_cents"]) == (
        "succeeded",
        True,
        PRICE_CENTS,
    )
    expected = metadata_event_id if isinstance(metadata_event_id, UUID) else None
    assert payment["event_id"] == expected
    assert stripe_api.one("select count(*) from deliveries") == 0


def test_a_failed_processing_is_kept_and_the_next_delivery_processes_it(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    body = events.succeeded(events.new_id("pi"), event_id)
    writer = stripe_api.database.writer
    writer.submit_sync(rename_table, ("payments", "payments_away"))
    try:
        failed = stripe_api.post_event(body)
        assert failed.status_code == 500
        assert failed.json()["error"] == "processing_failed"
        status, error, attempts, _ = _event_row(stripe_api, body["id"])  # type: ignore[misc]
        assert (status, attempts) == ("failed", 1)
        assert "payments" in error
        assert (
            _lead_status(stripe_api, event_id) == "lead"
        )  # the state change was rolled back with the failure
        assert stripe_api.post_event(body).status_code == 500  # still broken: failed again, counted
        assert _event_row(stripe_api, body["id"])[:3] == ("failed", error, 2)  # type: ignore[index]
    finally:
        writer.submit_sync(rename_table, ("payments_away", "payments"))

    retried = stripe_api.post_event(body)

    assert retried.status_code == 200
    assert retried.json() == {"received": True, "duplicate": False, "status": "processed"}
    status, error, attempts, _ = _event_row(stripe_api, body["id"])  # type: ignore[misc]
    assert (status, attempts) == ("processed", 3)
    assert error is not None  # the earlier failure stays on record
    assert _lead_status(stripe_api, event_id) == "paid"
    assert len(_deliveries(stripe_api, event_id)) == 3
    assert stripe_api.post_event(body).json()["duplicate"] is True


def test_concurrent_copies_of_a_failing_event_all_fail_and_none_is_half_written(
    stripe_api: RunningApi,
) -> None:
    event_id = stripe_api.create_lead()
    text, headers = events.signed(
        events.succeeded(events.new_id("pi"), event_id),
        stripe_api.settings.stripe_webhook_secret.get_secret_value(),
    )  # type: ignore[union-attr]
    url = stripe_api.webhook_url
    writer = stripe_api.database.writer
    writer.submit_sync(rename_table, ("payments", "payments_away"))
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(
                pool.map(
                    lambda _: httpx.post(url, content=text, headers=headers, timeout=30).status_code, range(8)
                )
            )
    finally:
        writer.submit_sync(rename_table, ("payments_away", "payments"))
    assert codes == [500] * 8
    assert stripe_api.rows("select status, processing_attempts from stripe_events") == [("failed", 8)]
    assert stripe_api.one("select count(*) from deliveries where kind = 'purchase'") == 0


# --- money from Stripe's real shapes -----------------------------------------------------------------------


STAGED_PAYMENT = (
    "currency",
    "is_price_mismatch",
    "expected_amount_cents",
    "expected_currency",
    "is_normal_sale",
)


def _staged_payment(api: RunningApi, payment_intent_id: str) -> dict[str, Any]:
    """The payment as the models stage it."""
    rows = _modelled(
        api,
        "select p.currency, p.is_price_mismatch, p.expected_amount_cents, p.expected_currency, "
        "o.is_normal_sale from stg_payments p join payment_outcomes o using (payment_intent_id) "
        "where payment_intent_id = ?",
        [payment_intent_id],
    )
    return dict(zip(STAGED_PAYMENT, rows[0], strict=True))


def test_a_succeeded_event_whose_intent_is_not_succeeded_marks_nothing_paid(stripe_api: RunningApi) -> None:
    # Stripe's fixture PaymentIntent (10.99 USD, requires_payment_method, 0 received) under a succeeded event.
    event_id = stripe_api.create_lead()
    intent = events.fixture_payment_intent(metadata={"event_id": str(event_id)})

    response = stripe_api.post_event(events.event("payment_intent.succeeded", intent))

    assert response.status_code == 200, response.text
    payment = _payment(stripe_api, intent["id"])
    assert (payment["status"], payment["succeeded_at"]) == ("open", None)
    assert _lead_status(stripe_api, event_id) == "lead"
    assert _deliveries(stripe_api, event_id) == {}


@pytest.mark.parametrize(
    ("amount", "received", "currency"),
    [(1099, 1099, "USD"), (PRICE_CENTS, 0, "eur"), (PRICE_CENTS + 1, PRICE_CENTS + 1, "EUR")],
)
def test_a_payment_unlike_the_product_price_is_kept_as_received_and_flagged(
    stripe_api: RunningApi, amount: int, received: int, currency: str
) -> None:
    event_id = stripe_api.create_lead()
    intent = events.fixture_payment_intent(
        status="succeeded",
        amount=amount,
        amount_received=received,
        currency=currency,
        metadata={"event_id": str(event_id)},
    )

    assert stripe_api.post_event(events.event("payment_intent.succeeded", intent)).status_code == 200

    payment = _payment(stripe_api, intent["id"])
    assert (payment["status"], payment["amount_cents"], payment["currency"]) == (
        "succeeded", received, currency.lower(),
    )  # fmt: skip
    mismatch = received != PRICE_CENTS or currency.lower() != "eur"
    assert (payment["is_price_mismatch"], payment["expected_amount_cents"], payment["expected_currency"]) == (
        mismatch, PRICE_CENTS, "eur",
    )  # fmt: skip
    assert _staged_payment(stripe_api, intent["id"]) == {
        "currency": currency.lower(),
        "is_price_mismatch": mismatch,
        "expected_amount_cents": PRICE_CENTS,
        "expected_currency": "eur",
        "is_normal_sale": False,
    }
    purchase = _deliveries(stripe_api, event_id)[("purchase", intent["id"])][1]
    assert purchase == {"transaction_id": intent["id"], "value": received / 100, "currency": currency.lower()}


def test_a_payment_at_the_product_price_is_a_normal_sale(stripe_api: RunningApi) -> None:
    pi = events.new_id("pi")
    assert stripe_api.post_event(events.succeeded(pi, stripe_api.create_lead())).status_code == 200
    payment = _payment(stripe_api, pi)
    assert (payment["is_price_mismatch"], payment["expected_amount_cents"]) == (False, PRICE_CENTS)
    assert _staged_payment(stripe_api, pi) == {
        "currency": "eur",
        "is_price_mismatch": False,
        "expected_amount_cents": PRICE_CENTS,
        "expected_currency": "eur",
        "is_normal_sale": True,
    }


def test_a_refund_naming_no_payment_intent_finds_its_payment_by_charge(stripe_api: RunningApi) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    success = events.succeeded(pi, event_id)
    charge_id = success["data"]["object"]["latest_charge"]
    refund = events.event(
        "charge.refunded",
        events.fixture_charge(
            id=charge_id, amount=PRICE_CENTS, amount_refunded=PRICE_CENTS, currency="eur", refunded=True
        ),
    )

    assert stripe_api.post_event(success).status_code == 200
    assert stripe_api.post_event(refund).status_code == 200

    assert stripe_api.rows("select payment_intent_id, status from payments") == [(pi, "refunded")]
    assert _lead_status(stripe_api, event_id) == "refunded"
    assert stripe_api.one("select count(*) from unlinked_refunds") == 0


def test_a_refund_of_a_charge_no_payment_holds_is_kept_apart_not_as_a_second_payment(
    stripe_api: RunningApi,
) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200
    # Stripe's fixture charge (no payment_intent), refunded, whose metadata names the lead.
    charge = events.fixture_charge(amount_refunded=100, refunded=True, metadata={"event_id": str(event_id)})

    response = stripe_api.post_event(events.event("charge.refunded", charge))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"
    assert stripe_api.rows("select payment_intent_id, status from payments") == [(pi, "succeeded")]
    assert _lead_status(stripe_api, event_id) == "paid"
    assert stripe_api.rows(
        "select charge_id, event_id, amount_cents, refunded_cents, currency from unlinked_refunds"
    ) == [(charge["id"], event_id, 100, 100, "usd")]
    staged = _modelled(
        stripe_api,
        "select charge_id, named_event_id, amount_cents, refunded_cents, currency from stg_unlinked_refunds",
    )
    assert staged == [(charge["id"], event_id, 100, 100, "usd")]


# --- consent: a payment never re-subscribes ------------------------------------------------------------------


def test_a_payment_after_an_unsubscribe_in_mailerlite_does_not_resubscribe(
    stripe_api: RunningApi, sandbox: Sandbox
) -> None:
    email = f"unsub.{uuid4().hex[:10]}@example.com"

    def subscriber() -> dict[str, Any]:
        found: dict[str, Any] = sandbox.state("mailerlite")["subscribers"].get(email) or {}
        return found

    event_id = stripe_api.create_lead(email=email)
    wait_until(lambda: subscriber().get("status") == "active", 10, "the opt-in")
    # The subscriber clicks "unsubscribe" in a MailerLite email.
    unsubscribed = httpx.post(
        f"{sandbox.mailerlite_url}/api/subscribers",
        json={"email": email, "status": "unsubscribed"},
        headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"},
    )
    assert unsubscribed.status_code == 200

    assert stripe_api.post_event(events.succeeded(events.new_id("pi"), event_id)).status_code == 200
    wait_until(
        lambda: (
            stripe_api.one(
                "select status from deliveries where event_id = ? and destination = 'mailerlite' "
                "and idempotency_key like '%:paid'",
                [event_id],
            )
            == "delivered"
        ),
        15,
        "the paid MailerLite upsert",
    )

    assert subscriber()["status"] == "unsubscribed"
    assert subscriber()["fields"]["payment_status"] == "paid"  # the fields still update
    paid = [r.body for r in sandbox.requests("mailerlite") if r.body and r.body.get("email") == email][-1]
    assert not {"status", "groups", "opted_in_at", "optin_ip"} & set(paid)


def test_either_of_two_rotating_secrets_verifies_and_a_third_does_not(
    stripe_api_with: Callable[..., RunningApi],
) -> None:
    api = stripe_api_with(stripe_webhook_secret="whsec_new_rolled_in, whsec_old_still_valid")
    for secret in ("whsec_new_rolled_in", "whsec_old_still_valid"):
        answer = api.post_event(events.succeeded(events.new_id("pi")), secret=secret)
        assert answer.status_code == 200, answer.text
    forged = api.post_event(events.succeeded(events.new_id("pi")), secret="whsec_someone_else")
    assert forged.status_code == 400 and "signature verification failed" in forged.json()["message"]
    assert api.one("select count(*) from stripe_events") == 2
