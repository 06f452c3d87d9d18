"""The demo routes and the client's config over plain HTTP: what is served when, and the card confirmation aid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from sandbox import LocalStripe
from tests.browser.conftest import PRICE_CENTS
from tests.conftest import free_port, wait_until
from tests.payments.conftest import RunningApi

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"


def card_token(localstripe: LocalStripe, number: str) -> str:
    """Tokenise a card the way the Stripe.js stand-in does (publishable key); return the token's card id."""
    response = httpx.post(
        f"{localstripe.url}/v1/tokens",
        data={
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2034",
            "card[cvc]": "123",
            "key": "pk_test_browser",
        },
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["card"]["id"])


def payment_intent(api: RunningApi, **lead: Any) -> dict[str, Any]:
    """A stored lead's PaymentIntent, through the API."""
    event_id = api.create_lead(**lead)
    response = api.client.post("/v1/payment-intents", json={"event_id": str(event_id)})
    assert response.status_code == 200, response.text
    return {"event_id": str(event_id), **response.json()}


def test_demo_is_off_by_default_but_the_client_is_served(api: httpx.Client) -> None:
    for path in (
        "/demo",
        "/demo/checkout",
        "/demo/config",
        "/static/demo/checkout.js",
        "/static/demo/demo.css",
    ):
        assert api.get(path).status_code == 404, path
    assert api.post("/demo/stripe/confirm-card", json={}).status_code == 404
    assert "ATTRIBUTION_DEMO" in api.get("/static/demo/checkout.js").json()["message"]

    script = api.get("/static/attribution.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert "window.Attribution = client" in script.text
    assert (
        api.get("/static/attribution.js", headers={"If-None-Match": script.headers["etag"]}).status_code
        == 304
    )
    assert api.get("/static/missing.js").status_code == 404
    assert api.get("/v1/client/config").json() == {"consent_version": "1.0", "require_consent": True}


def test_client_config_follows_settings_and_answers_allowed_origins(
    api_with: Callable[..., httpx.Client],
) -> None:
    client = api_with(
        consent_version="2.1", require_consent=False, attribution_allowed_origins="https://shop.example"
    )
    response = client.get("/v1/client/config", headers={"Origin": "https://shop.example"})
    assert response.json() == {"consent_version": "2.1", "require_consent": False}
    assert response.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.get("/v1/client/config", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_demo_serves_pages_and_points_at_localstripes_stripe_js(
    demo_api: RunningApi, browser_localstripe: LocalStripe
) -> None:
    page = demo_api.client.get("/demo/checkout")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="consent-modal"' in page.text
    assert demo_api.client.get("/demo").status_code == 200
    assert demo_api.client.get("/static/demo/checkout.js").status_code == 200

    config = demo_api.client.get("/demo/config").json()
    assert config["stripe_js_url"] == browser_localstripe.stripe_js_url
    assert config["stripe_publishable_key"].startswith("pk_")
    assert (config["price_cents"], config["currency"]) == (PRICE_CENTS, "eur")
    stand_in = httpx.get(config["stripe_js_url"], timeout=5)
    assert stand_in.status_code == 200
    assert "confirmCardPayment" in stand_in.text


def test_demo_config_refuses_real_stripe(api_with: Callable[..., httpx.Client]) -> None:
    response = api_with(attribution_demo=True).get("/demo/config")
    assert response.status_code == 503
    assert "STRIPE_API_BASE" in response.json()["message"]


def test_confirm_card_pays_once_and_refuses_bad_input(
    demo_api: RunningApi, browser_localstripe: LocalStripe
) -> None:
    intent = payment_intent(demo_api, email="dora.direta@example.com")
    card = card_token(browser_localstripe, GOOD_CARD)
    post = demo_api.client.post

    bad_bodies: list[tuple[dict[str, Any], str]] = [
        ({"client_secret": "nope", "payment_method": card}, "client_secret"),
        ({"client_secret": intent["client_secret"], "payment_method": "tok_123"}, "payment_method"),
        ({"client_secret": intent["client_secret"]}, "payment_method"),
        ({"client_secret": intent["client_secret"], "payment_method": card, "amount": 1}, "amount"),
    ]
    for body, field in bad_bodies:
        response = post("/demo/stripe/confirm-card", json=body)
        assert response.status_code == 422, body
        assert field in response.json()["message"]
    wrong_secret = intent["payment_intent_id"] + "_secret_wrong0secret"
    response = post("/demo/stripe/confirm-card", json={"client_secret": wrong_secret, "payment_method": card})
    assert response.status_code == 404
    unknown = {"client_secret": "pi_doesnotexist_secret_abc", "payment_method": card}
    assert post("/demo/stripe/confirm-card", json=unknown).status_code == 404
    stripe = browser_localstripe.client()
    assert stripe.v1.payment_intents.retrieve(intent["payment_intent_id"]).status == "requires_payment_method"

    body = {"client_secret": intent["client_secret"], "payment_method": card}
    first = post("/demo/stripe/confirm-card", json=body)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "id": intent["payment_intent_id"],
        "status": "succeeded",
        "amount": PRICE_CENTS,
        "currency": "eur",
    }
    again = post("/demo/stripe/confirm-card", json=body)  # a second click
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"
    succeeded = stripe.v1.events.list(params={"type": "payment_intent.succeeded", "limit": 100})
    assert [e.data.object["id"] for e in succeeded.auto_paging_iter()].count(intent["payment_intent_id"]) == 1
    wait_until(
        lambda: demo_api.one("select status from leads where event_id = ?", [intent["event_id"]]) == "paid",
        15,
        "the webhook to mark the lead paid",
    )


def test_confirm_card_declined_answers_402(demo_api: RunningApi, browser_localstripe: LocalStripe) -> None:
    intent = payment_intent(demo_api, email="diogo.recusado@example.com")
    body = {
        "client_secret": intent["client_secret"],
        "payment_method": card_token(browser_localstripe, DECLINED_CARD),
    }
    response = demo_api.client.post("/demo/stripe/confirm-card", json=body)
    assert response.status_code == 402
    assert response.json()["error"] == "card_declined"
    assert "declined" in response.json()["message"]
    retrieved = browser_localstripe.client().v1.payment_intents.retrieve(intent["payment_intent_id"])
    assert retrieved.status != "succeeded"


def test_confirm_card_when_stripe_is_down_answers_502(api_with: Callable[..., httpx.Client]) -> None:
    client = api_with(
        attribution_demo=True,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
        stripe_secret_key="sk_test_down",
    )
    body = {"client_secret": "pi_123_secret_abc", "payment_method": "card_123"}
    response = client.post("/demo/stripe/confirm-card", json=body)
    assert response.status_code == 502
    assert response.json()["error"] == "stripe_unavailable"
