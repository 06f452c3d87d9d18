"""Stripe objects and events the scenario builds itself, shaped as Stripe sends them (what localstripe cannot emit)."""

from __future__ import annotations

import time
from typing import Any


def build_payment_intent(payment_intent_id: str, *, amount: int, metadata: dict[str, str]) -> dict[str, Any]:
    """A succeeded PaymentIntent of `amount` cents."""
    return {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "eur",
        "status": "succeeded",
        "capture_method": "automatic",
        "latest_charge": None,
        "last_payment_error": None,
        "livemode": False,
        "metadata": metadata,
        "payment_method_types": ["card"],
    }


def build_charge(
    charge_id: str, payment_intent_id: str, *, amount: int, refunded_cents: int
) -> dict[str, Any]:
    """A paid charge of the PaymentIntent, `refunded_cents` of it refunded."""
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_refunded": refunded_cents,
        "currency": "eur",
        "paid": True,
        "payment_intent": payment_intent_id,
        "refunded": refunded_cents >= amount,
        "status": "succeeded",
        "metadata": {},
    }


def build_event(event_id: str, event_type: str, data_object: dict[str, Any]) -> dict[str, Any]:
    """An Event of `event_type` carrying `data_object`, created now."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
