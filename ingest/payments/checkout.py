"""Checkout: one Stripe PaymentIntent per lead, carrying the lead's attribution and consent in its metadata.

Stripe's Idempotency-Key (derived from event_id) makes a repeated create return the same PaymentIntent on real
Stripe, but localstripe ignores it, and a key only lives 24 h; so our own event_id → PaymentIntent link (the
lead's `payment_intent_id`, set once by the writer) is what makes every later click get the same PaymentIntent.

Across instances (PostgreSQL), the first click's read-create-link runs under an advisory lock on the event_id held
by a transaction on a read connection: a click on another instance waits for it and finds the link, so only one
PaymentIntent is ever created. A unique constraint could only refuse the second link after Stripe had created the
second PaymentIntent; the lock stops the create itself. The link is also set only if absent, decided on the row, so
a lock lost with its connection (the holder died mid-call) still cannot leave two links.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
import stripe
from pydantic import BaseModel, ConfigDict

from ingest.core.clock import utcnow
from ingest.core.errors import DomainError, NotConfigured, NotFound
from ingest.core.settings import Settings
from ingest.leads.repository import get_lead
from ingest.payments import repository
from ingest.store.database import Database

log = logging.getLogger(__name__)

# Stripe's metadata limits: at most 50 keys, keys up to 40 characters, values up to 500 characters.
MAX_METADATA_KEYS, MAX_METADATA_KEY_LENGTH, MAX_METADATA_VALUE_LENGTH = 50, 40, 500
LEAD_METADATA_FIELDS = (
    "user_session_id", "email", "phone", "full_name", "crm_contact_id",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
)  # fmt: skip
STRIPE_TIMEOUT_SECONDS = 10.0
STRIPE_NETWORK_RETRIES = 2


class StripeUnavailable(DomainError):
    """Stripe could not be reached, or refused a call that should have worked."""


class PaymentIntentIn(BaseModel):
    """The checkout asks for the PaymentIntent of a stored lead; amount and product come from settings."""

    model_config = ConfigDict(extra="forbid")

    event_id: UUID


class PaymentIntentOut(BaseModel):
    """What Stripe.js needs to confirm the payment."""

    payment_intent_id: str
    client_secret: str
    amount: int
    currency: str
    status: str


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """An official SDK client for STRIPE_API_BASE (localstripe in tests and the demo)."""
    if settings.stripe_secret_key is None:
        raise NotConfigured("Stripe is not configured: set STRIPE_SECRET_KEY")
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base},
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_SECONDS),
        max_network_retries=STRIPE_NETWORK_RETRIES,
    )


def _metadata_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="seconds") + "Z"  # every *_at column is naive UTC
    else:
        text = str(value)
    return text[:MAX_METADATA_VALUE_LENGTH] or None


def payment_metadata(
    settings: Settings, lead: dict[str, Any], consent: repository.ConsentInForce | None
) -> dict[str, str]:
    """The PaymentIntent metadata for a lead: ids, contact, UTM, product and the consent in force."""
    values: dict[str, Any] = {"event_id": lead["event_id"]}
    values |= {name: lead.get(name) for name in LEAD_METADATA_FIELDS}
    values |= {"product_id": settings.product_id, "product_name": settings.product_name}
    values |= {
        "marketing_consent": consent.marketing if consent else lead["marketing_consent"],
        "consent_timestamp": consent.recorded_at if consent else lead["consent_at"],
    }
    # The keys are the fixed names above (15 of at most 50, none over 40 characters); values are cut to 500.
    return {key: text for key, value in values.items() if (text := _metadata_value(value)) is not None}


def idempotency_key(event_id: UUID, params: dict[str, Any]) -> str:
    """The Stripe Idempotency-Key for creating this lead's PaymentIntent.

    Derived from event_id plus a digest of the parameters: Stripe refuses a key reused with other parameters,
    and the metadata can legitimately change between two clicks (a CRM contact id arriving, a new consent).
    """
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return f"payment-intent-{event_id}-{digest}"


@dataclass(frozen=True)
class PaymentIntentLink:
    """A PaymentIntent just created for a lead, to be linked unless the lead already has one."""

    event_id: UUID
    user_session_id: UUID
    payment_intent_id: str
    amount_cents: int
    currency: str
    created_at: datetime

    def payment_row(self) -> dict[str, Any]:
        """The `payments` row of a checkout's new, still open PaymentIntent."""
        return {
            "payment_intent_id": self.payment_intent_id,
            "event_id": self.event_id,
            "user_session_id": self.user_session_id,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "status": "open",
            "is_orphan": False,
            "refunded_cents": 0,
            "failure_code": None,
            "source": "checkout",
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "succeeded_at": None,
            "refunded_at": None,
            "last_stripe_event_id": None,
            "charge_id": None,
            "expected_amount_cents": None,
            "expected_currency": None,
            "is_price_mismatch": False,
        }


def link_payment_intents(
    conn: duckdb.DuckDBPyConnection, links: Sequence[PaymentIntentLink]
) -> list[str | DomainError]:
    """Writer batch handler: link each lead to its PaymentIntent once; answer the PaymentIntent that is linked."""
    leads = repository.lead_journeys(conn, {link.event_id for link in links})
    linked = {event_id: lead.payment_intent_id for event_id, lead in leads.items() if lead.payment_intent_id}
    results: list[str | DomainError] = []
    for link in links:
        if link.event_id not in leads:
            results.append(NotFound(f"no lead with event_id {link.event_id}"))
            continue
        if link.event_id in linked:
            results.append(linked[link.event_id])
            continue
        now_linked = repository.link_payment_intent(
            conn, link.event_id, link.payment_intent_id, link.created_at
        )
        if now_linked is None:
            results.append(NotFound(f"no lead with event_id {link.event_id}"))
            continue
        linked[link.event_id] = now_linked
        if now_linked == link.payment_intent_id:
            repository.insert_payment_if_absent(conn, link.payment_row())
        results.append(now_linked)
    return results


def _answer(intent: stripe.PaymentIntent) -> PaymentIntentOut:
    return PaymentIntentOut(
        payment_intent_id=intent.id,
        client_secret=intent.client_secret or "",
        amount=intent.amount,
        currency=intent.currency,
        status=intent.status,
    )


class Checkout:
    """Creates, at most once per event_id, the PaymentIntent a lead pays with."""

    def __init__(self, settings: Settings, database: Database, client: stripe.StripeClient) -> None:
        self.settings = settings
        self.database = database
        self.client = client
        self._locks: dict[UUID, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def _lead_lock(self, event_id: UUID) -> Iterator[None]:
        # Concurrent clicks for one lead in this process wait for each other here, so at most one of them holds a
        # read connection for the lock across instances.
        with self._guard:
            lock, users = self._locks.get(event_id, (threading.Lock(), 0))
            self._locks[event_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[event_id]
                if users == 1:
                    del self._locks[event_id]
                else:
                    self._locks[event_id] = (lock, users - 1)

    def payment_intent(self, event_id: UUID) -> PaymentIntentOut:
        """The lead's PaymentIntent: the one already linked, or a new one (blocking; call from a thread)."""
        price = self.settings.product_price_cents
        if price is None:
            raise NotConfigured("payments are not configured: set PRODUCT_PRICE_CENTS")
        with self._lead_lock(event_id):
            created, linked = self.database.read(lambda conn: self._link_once(conn, event_id, price))
        if created is not None and created.id == linked:
            log.info("payment intent created", extra={"event_id": str(event_id), "payment_intent_id": linked})
            return _answer(created)
        if created is not None:
            # Another process linked its PaymentIntent first: keep that one, and cancel ours so it can't be paid.
            self._cancel_unlinked(created.id)
        return _answer(self._call(self.client.v1.payment_intents.retrieve, linked))

    def _link_once(self, conn: Any, event_id: UUID, price: int) -> tuple[stripe.PaymentIntent | None, str]:
        """The PaymentIntent linked to the lead, after creating and linking one if it has none (then also the one
        created), under the event_id's lock across instances; reads on `conn`, inside the lock."""
        with repository.instance_lock(conn, repository.CHECKOUT_LOCKS, str(event_id), wait=True):
            lead = get_lead(conn, event_id)
            if lead is None:
                raise NotFound(f"no lead with event_id {event_id}")
            if lead["payment_intent_id"]:
                return None, str(lead["payment_intent_id"])
            consent = repository.consent_in_force(conn, event_id)
            params: dict[str, Any] = {
                "amount": price,
                "currency": self.settings.product_currency,
                "metadata": payment_metadata(self.settings, lead, consent),
            }
            intent = self._call(
                self.client.v1.payment_intents.create,
                params=params,
                options={"idempotency_key": idempotency_key(event_id, params)},
            )
            link = PaymentIntentLink(
                event_id=event_id,
                user_session_id=lead["user_session_id"],
                payment_intent_id=intent.id,
                amount_cents=price,
                currency=self.settings.product_currency,
                created_at=utcnow(),
            )
            # Committed before the lock is let go, so a click waiting on another instance finds the link.
            return intent, self.database.writer.submit_sync(link_payment_intents, link)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> stripe.PaymentIntent:
        try:
            intent: stripe.PaymentIntent = method(*args, **kwargs)
        except stripe.StripeError as exc:
            log.warning(
                "Stripe call failed", extra={"error": type(exc).__name__, "http_status": exc.http_status}
            )
            raise StripeUnavailable(
                f"Stripe did not complete the request ({type(exc).__name__}); try again"
            ) from exc
        return intent

    def _cancel_unlinked(self, payment_intent_id: str) -> None:
        try:
            self.client.v1.payment_intents.cancel(payment_intent_id)
        except stripe.StripeError as exc:
            log.warning(
                "could not cancel an unlinked PaymentIntent",
                extra={"payment_intent_id": payment_intent_id, "error": type(exc).__name__},
            )
