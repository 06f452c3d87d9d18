"""POST /v1/payment-intents against localstripe, and the full checkout flow ending in a verified webhook."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from uuid import UUID, uuid4

import httpx
import pytest

from ingest.core.settings import Settings
from ingest.payments import repository as payments_repository
from ingest.payments.checkout import (
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    payment_metadata,
)
from sandbox import LocalStripe
from tests.conftest import free_port, wait_until
from tests.payments.conftest import PRICE_CENTS, RunningApi


def _intents_for(localstripe: LocalStripe, event_id: UUID) -> list[str]:
    """PaymentIntents localstripe holds whose metadata names this lead and that are still payable."""
    listed = localstripe.client().v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    return [
        pi.id
        for pi in listed
        if pi.metadata.to_dict().get("event_id") == str(event_id) and pi.status != "canceled"
    ]


def test_payment_intent_carries_the_lead_in_its_metadata(
    stripe_api: RunningApi, localstripe: LocalStripe
) -> None:
    event_id = stripe_api.create_lead(full_name="Ana " + "Muito " * 30 + "Longa", utm_content="hero-cta")
    crm_contact_id = wait_until(
        lambda: stripe_api.one("select crm_contact_id from leads where event_id = ?", [event_id]),
        what="the lead's CRM contact id (delivered to the sandbox CRM)",
    )

    response = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(event_id)})

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["amount"], answer["currency"]) == (PRICE_CENTS, "eur")
    assert answer["client_secret"].startswith(answer["payment_intent_id"])
    intent = localstripe.client().v1.payment_intents.retrieve(answer["payment_intent_id"])
    assert intent.amount == PRICE_CENTS
    metadata = intent.metadata.to_dict()
    lead = stripe_api.rows("select user_session_id, email, phone from leads where event_id = ?", [event_id])[
        0
    ]
    assert metadata["event_id"] == str(event_id)
    assert metadata["user_session_id"] == str(lead[0])
    assert (metadata["email"], metadata["phone"]) == (lead[1], lead[2])
    assert (metadata["utm_source"], metadata["utm_campaign"], metadata["utm_content"]) == (
        "instagram", "lisbon-launch", "hero-cta",
    )  # fmt: skip
    assert (metadata["product_id"], metadata["marketing_consent"]) == (stripe_api.settings.product_id, "true")
    assert metadata["consent_timestamp"].endswith("Z")
    assert "utm_term" not in metadata  # unset values are left out
    assert metadata["crm_contact_id"] == crm_contact_id
    assert len(metadata) <= MAX_METADATA_KEYS
    assert all(len(key) <= MAX_METADATA_KEY_LENGTH for key in metadata)
    assert metadata["full_name"] == "Ana " + "Muito " * 30 + "Longa"
    assert stripe_api.one("select payment_intent_id from leads where event_id = ?", [event_id]) == intent.id
    payment = stripe_api.database.read(lambda conn: payments_repository.get_payment(conn, intent.id))
    assert payment is not None
    assert (payment["event_id"], payment["status"], payment["source"]) == (event_id, "open", "checkout")


def test_metadata_values_are_cut_to_stripes_limit(settings: Settings) -> None:
    lead = {"event_id": uuid4(), "full_name": "x" * 900, "email": "a@example.com", "marketing_consent": False}
    lead["consent_at"] = datetime(2026, 1, 2, 3, 4, 5)

    metadata = payment_metadata(settings, lead, None)

    assert len(metadata["full_name"]) == MAX_METADATA_VALUE_LENGTH
    assert (metadata["marketing_consent"], metadata["consent_timestamp"]) == ("false", "2026-01-02T03:04:05Z")
    assert "phone" not in metadata


def test_the_same_event_id_gives_the_same_payment_intent(
    stripe_api: RunningApi, localstripe: LocalStripe
) -> None:
    event_id = stripe_api.create_lead()
    first = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()
    url = f"{stripe_api.client.base_url}/v1/payment-intents"

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(url, json={"event_id": str(event_id)}, timeout=30), range(10))
        )

    assert {a.status_code for a in answers} == {200}
    assert {a.json()["payment_intent_id"] for a in answers} == {first["payment_intent_id"]}
    assert {a.json()["client_secret"] for a in answers} == {first["client_secret"]}
    assert _intents_for(localstripe, event_id) == [first["payment_intent_id"]]
    assert stripe_api.one("select count(*) from payments") == 1


def test_concurrent_first_clicks_create_one_payment_intent(
    stripe_api: RunningApi, localstripe: LocalStripe
) -> None:
    event_id = stripe_api.create_lead()
    url = f"{stripe_api.client.base_url}/v1/payment-intents"

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(url, json={"event_id": str(event_id)}, timeout=30), range(8))
        )

    ids = {a.json()["payment_intent_id"] for a in answers}
    assert len(ids) == 1
    assert _intents_for(localstripe, event_id) == list(ids)


def test_unknown_event_id_is_404(stripe_api: RunningApi) -> None:
    response = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(uuid4())})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"event_id": "not-a-uuid"},
        {"event_id": str(uuid4()), "amount": 1},
        {"event_id": str(uuid4()), "currency": "usd"},
    ],
)
def test_the_client_cannot_choose_the_amount_or_send_garbage(
    stripe_api: RunningApi, body: dict[str, object]
) -> None:
    response = stripe_api.client.post("/v1/payment-intents", json=body)
    assert response.status_code == 422
    assert stripe_api.one("select count(*) from payments") == 0


@pytest.mark.parametrize(
    "overrides", [{"product_price_cents": None}, {"stripe_secret_key": ""}], ids=["no-price", "no-key"]
)
def test_without_price_or_key_payments_answer_503(
    stripe_api_with: Callable[..., RunningApi], overrides: dict[str, object]
) -> None:
    api = stripe_api_with(**overrides)
    event_id = api.create_lead()

    response = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)})

    assert response.status_code == 503
    assert response.json()["error"] == "not_configured"
    assert api.one("select payment_intent_id from leads where event_id = ?", [event_id]) is None


def test_stripe_unreachable_is_502_and_links_nothing(stripe_api_with: Callable[..., RunningApi]) -> None:
    api = stripe_api_with(stripe_api_base=f"http://127.0.0.1:{free_port()}")
    event_id = api.create_lead()

    response = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)})

    assert response.status_code == 502
    assert response.json()["error"] == "stripe_unavailable"
    assert api.one("select payment_intent_id from leads where event_id = ?", [event_id]) is None
    assert api.one("select count(*) from payments") == 0


def test_checkout_to_paid_over_loopback(stripe_api: RunningApi, localstripe: LocalStripe) -> None:
    """Lead → PaymentIntent → confirm on localstripe → signed webhook → lead paid with its outbox rows."""
    event_id = stripe_api.create_lead(analytics_consent=False)
    intent_id = stripe_api.client.post("/v1/payment-intents", json={"event_id": str(event_id)}).json()[
        "payment_intent_id"
    ]
    stripe = localstripe.client()
    stripe.v1.payment_intents.update(intent_id, params={"payment_method": "pm_card_visa"})

    assert stripe.v1.payment_intents.confirm(intent_id).status == "succeeded"

    wait_until(
        lambda: stripe_api.one("select status from leads where event_id = ?", [event_id]) == "paid",
        what="localstripe's payment_intent.succeeded webhook",
    )
    event = stripe_api.rows("select event_type, source, status, object_id from stripe_events")
    assert event == [("payment_intent.succeeded", "webhook", "processed", intent_id)]
    payment = stripe_api.database.read(lambda conn: payments_repository.get_payment(conn, intent_id))
    assert payment is not None
    assert (payment["status"], payment["amount_cents"], payment["is_orphan"]) == (
        "succeeded",
        PRICE_CENTS,
        False,
    )
    rows = dict(
        stripe_api.rows(
            "select kind, status from deliveries where event_id = ? and kind = 'purchase' and destination = 'sgtm' "
            "or idempotency_key like ?",
            [event_id, f"{event_id}:%:paid"],
        )
    )
    assert rows["purchase"] == "suppressed"  # no analytics consent: recorded, never sent
    assert rows["contact_upsert"] != "suppressed" and rows["subscriber_upsert"] != "suppressed"
