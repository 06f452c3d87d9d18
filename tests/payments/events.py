"""Builders of real-shaped Stripe Event JSON (what localstripe cannot emit), signed like Stripe signs them."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import stripe

API_VERSION = "2024-06-20"


def new_id(prefix: str) -> str:
    """A Stripe-style object id: `evt_...`, `pi_...`, `ch_...`."""
    return f"{prefix}_{secrets.token_hex(12)}"


def charge_object(
    payment_intent_id: str,
    *,
    charge_id: str | None = None,
    amount: int = 4700,
    currency: str = "eur",
    amount_refunded: int = 0,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Charge as Stripe sends it in charge.* events."""
    charge_id = charge_id or new_id("ch")
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "balance_transaction": new_id("txn"),
        "billing_details": {"address": {"city": None, "country": "PT", "line1": None, "postal_code": None}},
        "captured": True,
        "created": int(time.time()),
        "currency": currency,
        "customer": None,
        "description": None,
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": metadata or {},
        "outcome": {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "application_fee_amount": None,
        "calculated_statement_descriptor": "CAFE COM VENDAS",
        "fraud_details": {},
        "receipt_email": None,
        "receipt_url": f"https://pay.stripe.com/receipts/payment/{secrets.token_urlsafe(48)}",
        "source_transfer": None,
        "statement_descriptor": None,
        "transfer_group": None,
        "payment_intent": payment_intent_id,
        "payment_method": new_id("pm"),
        "payment_method_details": {
            "card": {"brand": "visa", "country": "US", "exp_month": 12, "exp_year": 2030, "last4": "4242"},
            "type": "card",
        },
        "refunded": amount_refunded >= amount,
        "refunds": {"object": "list", "data": [], "has_more": False, "total_count": 0},
        "status": "succeeded",
    }


def payment_intent_object(
    payment_intent_id: str,
    *,
    status: str = "succeeded",
    amount: int = 4700,
    currency: str = "eur",
    metadata: dict[str, str] | None = None,
    decline_code: str | None = None,
) -> dict[str, Any]:
    """A PaymentIntent as Stripe sends it in payment_intent.* events."""
    charge = charge_object(payment_intent_id, amount=amount, currency=currency)
    return {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount if status == "succeeded" else 0,
        "amount_details": {"tip": {}},
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "invoice": None,
        "on_behalf_of": None,
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "transfer_data": None,
        "transfer_group": None,
        "capture_method": "automatic",
        "client_secret": f"{payment_intent_id}_secret_{secrets.token_hex(8)}",
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": currency,
        "customer": None,
        "description": None,
        "last_payment_error": (
            {
                "code": "card_declined",
                "decline_code": decline_code,
                "message": "Your card was declined.",
                "type": "card_error",
            }
            if decline_code
            else None
        ),
        "latest_charge": charge["id"] if status == "succeeded" else None,
        "livemode": False,
        "metadata": metadata or {},
        "next_action": None,
        "payment_method": new_id("pm"),
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "status": status,
    }


def event(
    event_type: str, data_object: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """An Event wrapping `data_object`."""
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created or int(time.time()),
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": new_id("req"), "idempotency_key": None},
        "type": event_type,
    }


def succeeded(payment_intent_id: str, event_id: Any = None, **kwargs: Any) -> dict[str, Any]:
    """A payment_intent.succeeded Event; `event_id` is our journey id put in the metadata."""
    metadata = {"event_id": str(event_id)} if event_id is not None else {}
    return event(
        "payment_intent.succeeded", payment_intent_object(payment_intent_id, metadata=metadata, **kwargs)
    )


def refunded(
    payment_intent_id: str,
    *,
    amount: int = 4700,
    amount_refunded: int | None = None,
    charge_id: str | None = None,
) -> dict[str, Any]:
    """A charge.refunded Event (full refund unless `amount_refunded` says otherwise)."""
    charge = charge_object(
        payment_intent_id,
        charge_id=charge_id,
        amount=amount,
        amount_refunded=amount if amount_refunded is None else amount_refunded,
    )
    return event("charge.refunded", charge)


def signed(
    body: dict[str, Any] | str, secret: str, *, timestamp: int | None = None
) -> tuple[str, dict[str, str]]:
    """The raw body and headers of a webhook delivery, signed with `stripe.WebhookSignature`."""
    text = body if isinstance(body, str) else json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(text, secret, timestamp=timestamp)
    return text, {"Stripe-Signature": header, "Content-Type": "application/json"}


# --- copies of the shapes in Stripe's own OpenAPI fixtures (stripe/openapi fixtures3.json), written out here -------


def fixture_payment_intent(**overrides: Any) -> dict[str, Any]:
    """A PaymentIntent shaped as Stripe's fixture: 10.99 USD, still requires_payment_method, 0 received."""
    payment_intent_id = new_id("pi")
    body: dict[str, Any] = {
        "amount": 1099,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{payment_intent_id}_secret_{secrets.token_hex(12)}",
        "confirmation_method": "automatic",
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "description": None,
        "id": payment_intent_id,
        "invoice": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "object": "payment_intent",
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
    return body | overrides


def fixture_charge(**overrides: Any) -> dict[str, Any]:
    """A Charge shaped as Stripe's fixture: 1.00 USD, made without a PaymentIntent (`payment_intent: null`)."""
    charge_id = new_id("ch")
    body: dict[str, Any] = {
        "amount": 100,
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": new_id("txn"),
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
        },
        "calculated_statement_descriptor": None,
        "captured": False,
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "description": "My First Test Charge (created for API docs)",
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "id": charge_id,
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "object": "charge",
        "on_behalf_of": None,
        "outcome": None,
        "paid": True,
        "payment_intent": None,
        "payment_method": new_id("card"),
        "payment_method_details": None,
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/{secrets.token_urlsafe(24)}",
        "refunded": False,
        "refunds": {
            "data": [],
            "has_more": False,
            "object": "list",
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }
    return body | overrides
