"""Stripe events as they arrive: the shapes we accept, parsing them (bounded, refusing what can never be
processed) and verifying their signature on the raw body. Processing them is `ingest.payments.webhooks`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import stripe

from ingest.core.clock import from_unix
from ingest.core.errors import DomainError, NotConfigured

SIGNATURE_TOLERANCE_SECONDS = 300
HANDLED_TYPES = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "charge.refunded",
    }
)
# The PaymentIntent's own status decides what a payment_intent.* event records, whatever the event type says.
_PAYMENT_STATUS_OF_INTENT = {
    "succeeded": "succeeded",
    "canceled": "canceled",
    "processing": "open",
    "requires_action": "open",
    "requires_capture": "open",
    "requires_confirmation": "open",
    "requires_payment_method": "open",  # "failed" when it carries a last_payment_error
}

_MAX_ID_LENGTH = 255
MAX_CENTS = 2**63 - 1  # the BIGINT columns amounts are stored in
# Stripe's events nest about eight levels deep; a body nested far deeper is refused before a parser recurses into it.
MAX_JSON_DEPTH = 64
# A string (to the end of the text when unterminated, so every match consumes: linear time) or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
_CURRENCY = re.compile(r"^[a-z]{3}$")


class InvalidWebhook(DomainError):
    """The webhook's signature, body or event shape is unacceptable (answered 400, nothing recorded)."""


class EventRejected(Exception):
    """A verified event that can never be processed; it is stored as rejected with this reason."""


@dataclass(frozen=True, slots=True)
class PaymentChange:
    """What an allow-listed event says about one PaymentIntent."""

    payment_intent_id: str | None  # None: a refund of a charge that names no PaymentIntent (linked by charge)
    target_status: str | None  # None: a partial refund, which only moves refunded_cents
    amount_cents: int | None
    currency: str | None  # lower-case
    refunded_cents: int
    metadata_event_id: UUID | None
    failure_code: str | None
    charge_id: str | None = None


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """A Stripe Event whose shape is checked, with its raw JSON kept for the record."""

    stripe_event_id: str
    event_type: str
    object_id: str | None
    created_at: datetime | None  # None only on a rejected event
    payload: str
    change: PaymentChange | None  # None for types we store and acknowledge without processing
    change_key: str
    rejection: str | None = None  # why this verified event can never be processed; stored as rejected


def _text(value: Any, field: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ID_LENGTH:
        raise EventRejected(f"{field} must be a non-empty string of at most {_MAX_ID_LENGTH} characters")
    return value


def _cents(value: Any, field: str, *, required: bool = True) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CENTS:
        raise EventRejected(f"{field} must be an integer between 0 and {MAX_CENTS}")
    return value


def _currency(value: Any, field: str) -> str | None:
    """Stripe's three-letter ISO code, stored lower-case (Stripe sends it so, but `EUR` and `eur` are one)."""
    text = _text(value, field, required=False)
    if text is None:
        return None
    if not _CURRENCY.match(text.lower()):
        raise EventRejected(f"{field} must be a three-letter ISO currency code")
    return text.lower()


def _id_of(value: Any) -> Any:
    """An id field that Stripe may send as a string or, expanded, as an object (localstripe's latest_charge)."""
    return value.get("id") if isinstance(value, dict) else value


def _metadata_event_id(data_object: dict[str, Any]) -> UUID | None:
    metadata = data_object.get("metadata")
    raw = metadata.get("event_id") if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return UUID(raw)
    except ValueError:
        return None  # not one of ours: the payment is kept as an orphan


def _refund_change(obj: dict[str, Any]) -> PaymentChange:
    refunded = obj.get("refunded")
    if not isinstance(refunded, bool):
        raise EventRejected("data.object.refunded must be a boolean")
    return PaymentChange(
        # None for a charge made without a PaymentIntent: it is matched to a payment by its charge id, or kept
        # as an unlinked refund, never as a payment of its own.
        payment_intent_id=_text(
            _id_of(obj.get("payment_intent")), "data.object.payment_intent", required=False
        ),
        target_status="refunded" if refunded else None,
        amount_cents=_cents(obj.get("amount"), "data.object.amount"),
        currency=_currency(obj.get("currency"), "data.object.currency"),
        refunded_cents=_cents(obj.get("amount_refunded"), "data.object.amount_refunded") or 0,
        metadata_event_id=_metadata_event_id(obj),
        failure_code=None,
        charge_id=_text(obj.get("id"), "data.object.id"),
    )


def _intent_change(obj: dict[str, Any]) -> PaymentChange:
    """A PaymentIntent recorded from its own status, amount_received and currency (not the event type's word)."""
    status = obj.get("status")
    if status not in _PAYMENT_STATUS_OF_INTENT:
        raise EventRejected(f"data.object.status {str(status)[:40]!r} is not a PaymentIntent status")
    error = obj.get("last_payment_error")
    failure_code = error.get("decline_code") or error.get("code") if isinstance(error, dict) else None
    target = _PAYMENT_STATUS_OF_INTENT[status]
    if status == "requires_payment_method" and isinstance(error, dict):
        target = "failed"
    amount = _cents(obj.get("amount"), "data.object.amount")
    received = _cents(obj.get("amount_received"), "data.object.amount_received", required=False)
    if received is None:
        # Stripe always sends amount_received; localstripe omits it, and there a succeeded intent took its amount.
        received = amount
    return PaymentChange(
        payment_intent_id=_text(obj.get("id"), "data.object.id"),
        target_status=target,
        amount_cents=received if target == "succeeded" else amount,  # 0 received is 0, not "missing"
        currency=_currency(obj.get("currency"), "data.object.currency"),
        refunded_cents=0,
        metadata_event_id=_metadata_event_id(obj),
        failure_code=str(failure_code)[:100] if failure_code else None,
        charge_id=_text(_id_of(obj.get("latest_charge")), "data.object.latest_charge", required=False),
    )


def json_depth(text: str) -> int:
    """How deeply a JSON text nests its arrays and objects, read without parsing it (brackets in strings skipped)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(text):
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def parse_event(payload: str) -> StripeEvent:
    """Check an Event's shape (id, type, created, data.object) and read the payment change it reports.

    A body that is no Event at all (not JSON, nested too deep, no id or type) raises InvalidWebhook: there is
    nothing to key it by. An Event whose content can never be processed comes back with its `rejection`.
    """
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise InvalidWebhook(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        event = json.loads(payload)
    except ValueError:
        raise InvalidWebhook("body is not valid JSON") from None
    if not isinstance(event, dict):
        raise InvalidWebhook("body is not a JSON object")
    try:
        stripe_event_id = str(_text(event.get("id"), "id"))
        event_type = str(_text(event.get("type"), "type"))
    except EventRejected as exc:
        raise InvalidWebhook(str(exc)) from None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    base = StripeEvent(
        stripe_event_id=stripe_event_id,
        event_type=event_type,
        object_id=object_id if isinstance(object_id, str) and len(object_id) <= _MAX_ID_LENGTH else None,
        created_at=None,
        payload=payload,
        change=None,
        change_key=f"{event_type}:{object_id}",
    )
    try:
        created = event.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            raise EventRejected("created must be a Unix timestamp")
        try:
            created_at = from_unix(created)
        except ValueError as exc:
            raise EventRejected(f"created {exc}") from None
        if not isinstance(obj, dict):
            raise EventRejected("event has no data.object")
        object_id = str(_text(obj.get("id"), "data.object.id"))
        change = None
        if event_type == "charge.refunded":
            change = _refund_change(obj)
        elif event_type in HANDLED_TYPES:
            change = _intent_change(obj)
    except EventRejected as exc:
        return replace(base, rejection=str(exc))
    change_key = f"{event_type}:{object_id}"
    if change is not None and event_type == "charge.refunded":
        # Each refund of one charge is its own change; the running refunded amount tells them apart.
        change_key += f":{change.refunded_cents}"
    return replace(base, object_id=object_id, created_at=created_at, change=change, change_key=change_key)


def verify_event(
    body: bytes,
    signature: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> StripeEvent:
    """Verify `Stripe-Signature` on the raw body (HMAC-SHA256, timestamp tolerance) against any of `secrets` (more
    than one while a secret is rolled), then parse the event."""
    if not secrets:
        # An empty secret would make every forged body "verify": refuse to process webhooks at all.
        raise NotConfigured("Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET")
    if not signature:
        raise InvalidWebhook("missing Stripe-Signature header")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWebhook("body is not UTF-8") from None
    failure: stripe.SignatureVerificationError | None = None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            failure = exc
            continue
        return parse_event(payload)
    assert failure is not None
    raise InvalidWebhook(f"signature verification failed: {failure.user_message or failure}")
