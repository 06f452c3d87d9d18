"""Wire bodies: what each destination is sent, rendered from the delivery row and the current lead row."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.outbox.destinations.crm import crm_body, crm_signature, render_crm
from ingest.outbox.destinations.mailerlite import UPDATE_ONLY, mailerlite_body
from ingest.outbox.destinations.rendering import CannotRender
from ingest.outbox.destinations.sgtm import derive_client_id, normalise_email_for_google, sgtm_body
from ingest.outbox.records import ClaimedDelivery
from sandbox.crm import sign_crm_body
from tests.conftest import make_settings

NOW = datetime(2026, 3, 14, 12, 0, 0)


def lead_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": uuid.UUID("6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001"),
        "user_session_id": uuid.UUID("6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0002"),
        "full_name": "Ana Teste",
        "email": "Ana.Teste@Gmail.com",
        "phone": "+351912345678",
        "utm_source": "instagram",
        "utm_medium": "social",
        "utm_campaign": "lisbon-launch",
        "utm_content": None,
        "utm_term": None,
        "ga_client_id": None,
        "lead_created_at": NOW - timedelta(minutes=5),
        "checkout_started_at": None,
        "marketing_consent": True,
        "analytics_consent": True,
        "consent_method": "modal",
        "consent_at": NOW - timedelta(minutes=5),
        "consent_ip": "203.0.113.7",
        "status": "lead",
        "crm_contact_id": None,
        "mailerlite_subscriber_id": None,
    }
    row.update(overrides)
    return row


def claimed(
    destination: str = "sgtm",
    kind: str = "generate_lead",
    *,
    lead: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    created_at: datetime = NOW,
    marketing: bool | None = True,
    analytics: bool | None = True,
    no_lead: bool = False,
) -> ClaimedDelivery:
    row = None if no_lead else (lead or lead_row())
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        event_id=row["event_id"] if row else uuid.UUID("6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0009"),
        user_session_id=row["user_session_id"] if row else None,
        destination=destination,
        kind=kind,
        purpose={"sgtm": "analytics", "mailerlite": "marketing", "crm": "contact"}[destination],
        idempotency_key=f"key:{destination}:{kind}",
        payload=payload or {},
        attempt_count=0,
        failure_count=0,
        created_at=created_at,
        lead=row,
        consent_marketing=marketing,
        consent_analytics=analytics,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    return make_settings(
        tmp_path,
        sgtm_endpoint="http://127.0.0.1:9/mp/collect",
        crm_webhook_url="http://127.0.0.1:9/hook",
        crm_signing_secret="s3cret",
        product_price_cents=12000,
    )


def test_google_email_normalisation_drops_gmail_dots_only() -> None:
    assert normalise_email_for_google("  Ana.Teste@GMail.com ") == "anateste@gmail.com"
    assert normalise_email_for_google("ana.teste@googlemail.com") == "anateste@googlemail.com"
    assert normalise_email_for_google("Ana.Teste@Example.COM") == "ana.teste@example.com"


def test_sgtm_sends_sha256_of_normalised_email_and_phone_never_raw(settings: Any) -> None:
    body = sgtm_body(claimed(), settings, NOW)
    assert body["user_data"] == {
        "sha256_email_address": [hashlib.sha256(b"anateste@gmail.com").hexdigest()],
        "sha256_phone_number": [hashlib.sha256(b"+351912345678").hexdigest()],
    }
    text = json.dumps(body)
    assert "@" not in text and "+351" not in text and "Teste" not in text


def test_sgtm_purchase_carries_transaction_value_currency_items_and_event_id(settings: Any) -> None:
    payload = {"transaction_id": "pi_123", "value": 120.0, "currency": "EUR"}
    body = sgtm_body(claimed(kind="purchase", payload=payload), settings, NOW)
    (event,) = body["events"]
    assert event["name"] == "purchase"
    params = event["params"]
    assert params["transaction_id"] == "pi_123"
    assert params["value"] == 120.0 and params["currency"] == "EUR"
    assert params["event_id"] == "6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001"
    assert params["items"] == [
        {"item_id": settings.product_id, "item_name": settings.product_name, "price": 120.0, "quantity": 1}
    ]
    assert body["consent"] == {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
    assert body["timestamp_micros"] == int((NOW - datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def test_client_id_is_the_browsers_when_given_else_stable_in_ga_form(settings: Any) -> None:
    given = sgtm_body(claimed(lead=lead_row(ga_client_id="123456789.1700000000")), settings, NOW)
    assert given["client_id"] == "123456789.1700000000"
    derived = sgtm_body(claimed(), settings, NOW)["client_id"]
    assert re.fullmatch(r"\d{1,10}\.\d{10}", derived)
    assert derived == sgtm_body(claimed(kind="purchase"), settings, NOW)["client_id"]  # same journey
    assert derived != derive_client_id(str(uuid.uuid4()))


def test_sgtm_respects_ga4_limits_and_drops_email_looking_values(settings: Any) -> None:
    lead = lead_row(utm_campaign="c" * 150, utm_content="someone@example.com")
    body = sgtm_body(claimed(lead=lead), settings, NOW)
    params = body["events"][0]["params"]
    assert params["campaign"] == "c" * 100
    assert "content" not in params
    assert all(len(name) <= 40 for name in params)
    assert len(params) <= 25


def test_sgtm_omits_timestamp_older_than_ga4_backdating_window(settings: Any) -> None:
    old = claimed(created_at=NOW - timedelta(hours=80))
    assert "timestamp_micros" not in sgtm_body(old, settings, NOW)
    recent = claimed(created_at=NOW - timedelta(hours=2))
    assert "timestamp_micros" in sgtm_body(recent, settings, NOW)


def test_sgtm_sends_no_user_data_and_denied_consent_without_marketing_consent(settings: Any) -> None:
    body = sgtm_body(claimed(marketing=False), settings, NOW)
    assert "user_data" not in body
    assert body["consent"] == {"ad_user_data": "DENIED", "ad_personalization": "DENIED"}


def test_crm_body_moves_state_forward_and_carries_known_contact_id() -> None:
    lead = lead_row(status="paid", crm_contact_id="ct_42")
    body = crm_body(claimed("crm", "contact_upsert", lead=lead, payload={"lead_status": "lead"}))
    assert body["lead_status"] == "paid"  # a late "lead" update never moves the CRM backwards
    assert body["contact_id"] == "ct_42"
    paid = crm_body(claimed("crm", "contact_upsert", payload={"lead_status": "paid", "amount_cents": 12000}))
    assert paid["lead_status"] == "paid" and paid["amount"] == 120.0


def test_crm_signature_verifies_with_the_receivers_scheme(settings: Any) -> None:
    request = render_crm(claimed("crm", "contact_upsert"), settings, NOW)
    unix = int((NOW - datetime(1970, 1, 1)).total_seconds())
    assert request.headers["X-Attribution-Signature"] == sign_crm_body("s3cret", request.body, unix)
    assert request.headers["X-Attribution-Signature"] == crm_signature("s3cret", request.body, unix)
    assert request.headers["Idempotency-Key"] == "key:crm:contact_upsert"


def test_a_delivery_with_no_lead_and_no_email_cannot_be_rendered() -> None:
    with pytest.raises(CannotRender, match="no lead stored"):
        crm_body(claimed("crm", "contact_upsert", no_lead=True, payload={"lead_status": "paid"}))


@pytest.mark.parametrize(
    "payload",
    [{"payment_status": "paid"}, {UPDATE_ONLY: True}],
    ids=["payment-update", "repair-of-a-held-subscriber"],
)
def test_an_upsert_after_the_opt_in_never_sets_status_groups_or_opt_in(settings: Any, payload: Any) -> None:
    body = mailerlite_body(claimed("mailerlite", "subscriber_upsert", payload=payload), settings)
    assert set(body) == {"email", "fields"}  # an unsubscribe made in MailerLite holds
    assert body["fields"]["event_id"] == "6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001"


def test_mailerlite_upsert_has_enhanced_fields_and_unsubscribe_is_minimal(settings: Any) -> None:
    body = mailerlite_body(claimed("mailerlite", "subscriber_upsert", lead=lead_row(status="paid")), settings)
    assert body["email"] == "Ana.Teste@Gmail.com"
    assert body["status"] == "active"
    assert body["opted_in_at"] == "2026-03-14 11:55:00"
    assert body["optin_ip"] == "203.0.113.7"
    assert body["fields"]["payment_status"] == "paid"
    assert body["fields"]["event_id"] == "6f1d8c8e-8a44-4d3a-9a57-2d9b0f1c0001"
    assert body["fields"]["marketing_consent"] == "true"
    unsubscribe = mailerlite_body(claimed("mailerlite", "unsubscribe"), settings)
    assert unsubscribe == {"email": "Ana.Teste@Gmail.com", "status": "unsubscribed"}
