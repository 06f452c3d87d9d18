"""Meta's Purchase from Stripe webhooks through the real API: planned once per payment, refunded later or not,
with the time Stripe says it happened, gated by marketing consent, and received once by the Meta fake."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

from sandbox import Sandbox
from tests.conftest import wait_until
from tests.payments import events
from tests.payments.conftest import PRICE_CENTS, RunningApi


def _meta_purchases(api: RunningApi, event_id: UUID) -> list[tuple[str, str, dict[str, Any]]]:
    rows = api.rows(
        "select idempotency_key, status, payload from deliveries "
        "where destination = 'meta' and kind = 'purchase' and event_id = ?",
        [event_id],
    )
    return [(key, status, json.loads(payload)) for key, status, payload in rows]


def _received(sandbox: Sandbox, event_id: UUID, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in sandbox.state("meta")["events"]
        if e["event_id"] == str(event_id) and e["event_name"] == name
    ]


def test_a_purchase_refunded_before_its_success_is_heard_of_reaches_meta_once(
    stripe_api: RunningApi, sandbox: Sandbox
) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    refund = events.refunded(pi)
    success = events.succeeded(pi, event_id)
    success["created"] = refund["created"] = int(time.time()) - 3600  # Stripe knew an hour ago

    assert stripe_api.post_event(refund).status_code == 200
    assert stripe_api.post_event(success).status_code == 200
    assert stripe_api.post_event(success).json()["duplicate"] is True

    ((key, _, payload),) = _meta_purchases(stripe_api, event_id)
    assert key == f"{event_id}:meta:purchase:{pi}"
    assert payload["transaction_id"] == pi and payload["value"] == PRICE_CENTS / 100
    wait_until(lambda: _received(sandbox, event_id, "Purchase"), what="Meta to receive the Purchase")
    (purchase,) = _received(sandbox, event_id, "Purchase")
    assert purchase["event_time"] == success["created"]  # when it happened, not when it was sent
    assert purchase["custom_data"]["order_id"] == pi and purchase["custom_data"]["currency"] == "EUR"
    assert len(_received(sandbox, event_id, "Lead")) == 1


def test_a_refund_after_the_success_sends_no_second_purchase(
    stripe_api: RunningApi, sandbox: Sandbox
) -> None:
    event_id = stripe_api.create_lead()
    pi = events.new_id("pi")
    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200
    wait_until(lambda: _received(sandbox, event_id, "Purchase"), what="Meta to receive the Purchase")
    assert stripe_api.post_event(events.refunded(pi)).status_code == 200

    assert stripe_api.one("select status from leads where event_id = ?", [event_id]) == "refunded"
    assert len(_meta_purchases(stripe_api, event_id)) == 1
    assert len(_received(sandbox, event_id, "Purchase")) == 1


def test_a_purchase_after_marketing_consent_was_withdrawn_is_suppressed(
    stripe_api: RunningApi, sandbox: Sandbox
) -> None:
    event_id = stripe_api.create_lead()
    session = stripe_api.one("select user_session_id from leads where event_id = ?", [event_id])
    withdrawal = {
        "user_session_id": str(session),
        "marketing_consent": False,
        "analytics_consent": True,
        "consent_method": "modal",
        "consent_version": "1.0",
    }
    assert stripe_api.client.post("/v1/consent", json=withdrawal).status_code == 200
    pi = events.new_id("pi")
    assert stripe_api.post_event(events.succeeded(pi, event_id)).status_code == 200

    ((_, status, _),) = _meta_purchases(stripe_api, event_id)
    assert status == "suppressed"
    assert _received(sandbox, event_id, "Purchase") == []
