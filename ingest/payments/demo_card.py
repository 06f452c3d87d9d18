"""Demo only: the card confirmation real Stripe.js does in the browser, done for localstripe's stand-in.

Real Stripe.js confirms a PaymentIntent from the browser with the publishable key and the client secret.
localstripe's stand-in cannot: its `confirmCardPayment` only answers the 3-D Secure challenge of a PaymentIntent
already confirmed by a server, and localstripe answers "Not implemented" to `confirm` with a payment method.
So the demo page tokenises the card with the stand-in (the card number goes only to the fake Stripe, as it
would go only to Stripe) and the demo API attaches the token's card to the PaymentIntent and confirms it here.
A shop's own checkout uses real Stripe.js and never needs this.
"""

from __future__ import annotations

import hmac
import logging
import re

import stripe
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.core.errors import Conflict, DomainError, InvalidField, NotFound
from ingest.payments.checkout import StripeUnavailable

log = logging.getLogger(__name__)

_CLIENT_SECRET = re.compile(r"^(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+$")
_PAYMENT_METHOD = re.compile(r"^(?:card|pm|src)_[A-Za-z0-9]+$")
# Statuses after which confirming again has nothing to do (a second click, or a card awaiting 3-D Secure).
_CONFIRMED = frozenset({"succeeded", "processing", "requires_capture", "requires_action"})


class CardDeclined(DomainError):
    """The card was declined; the message is Stripe's, fit to show the buyer."""


class CardConfirmIn(BaseModel):
    """The PaymentIntent's client secret (as Stripe.js holds it) and the tokenised card to pay with."""

    model_config = ConfigDict(extra="forbid")

    client_secret: str = Field(max_length=200)
    payment_method: str = Field(max_length=100)

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, value: str) -> str:
        if not _CLIENT_SECRET.match(value):
            raise ValueError("expected a PaymentIntent client secret, pi_..._secret_...")
        return value

    @field_validator("payment_method")
    @classmethod
    def _payment_method(cls, value: str) -> str:
        if not _PAYMENT_METHOD.match(value):
            raise ValueError("expected a card_..., pm_... or src_... id")
        return value

    @property
    def payment_intent_id(self) -> str:
        """The PaymentIntent id the client secret belongs to."""
        match = _CLIENT_SECRET.match(self.client_secret)
        assert match is not None  # checked by the validator
        return match.group(1)


class CardConfirmOut(BaseModel):
    """The PaymentIntent after confirmation, as much of it as the page needs."""

    id: str
    status: str
    amount: int
    currency: str


def _answer(intent: stripe.PaymentIntent) -> CardConfirmOut:
    return CardConfirmOut(id=intent.id, status=intent.status, amount=intent.amount, currency=intent.currency)


def _unavailable(exc: stripe.StripeError) -> StripeUnavailable:
    log.warning("demo card confirmation: Stripe call failed", extra={"error": type(exc).__name__})
    return StripeUnavailable(f"Stripe did not complete the request ({type(exc).__name__}); try again")


def _retrieve(client: stripe.StripeClient, confirm: CardConfirmIn) -> stripe.PaymentIntent:
    try:
        intent = client.v1.payment_intents.retrieve(confirm.payment_intent_id)
    except stripe.InvalidRequestError:
        intent = None
    except stripe.StripeError as exc:
        raise _unavailable(exc) from exc
    # Stripe.js is authorised by the client secret: a wrong one is answered like an unknown PaymentIntent.
    if intent is None or not hmac.compare_digest(intent.client_secret or "", confirm.client_secret):
        raise NotFound("no PaymentIntent with this client secret")
    return intent


def confirm_card_payment(client: stripe.StripeClient, confirm: CardConfirmIn) -> CardConfirmOut:
    """Attach the tokenised card to the PaymentIntent and confirm it; a confirmed one is answered as it is."""
    intent = _retrieve(client, confirm)
    if intent.status in _CONFIRMED:
        return _answer(intent)
    if intent.status == "canceled":
        raise Conflict("this PaymentIntent was canceled; start the checkout again")
    try:
        client.v1.payment_intents.update(intent.id, params={"payment_method": confirm.payment_method})
        intent = client.v1.payment_intents.confirm(intent.id)
    except stripe.CardError as exc:
        log.info("demo card payment declined", extra={"payment_intent_id": intent.id, "code": exc.code})
        raise CardDeclined(exc.user_message or "the card was declined") from exc
    except stripe.InvalidRequestError as exc:
        # Two clicks racing: the other one confirmed it first.
        current = _retrieve(client, confirm)
        if current.status in _CONFIRMED:
            return _answer(current)
        raise InvalidField("payment_method", exc.user_message or "Stripe refused this card") from exc
    except stripe.StripeError as exc:
        raise _unavailable(exc) from exc
    log.info("demo card payment confirmed", extra={"payment_intent_id": intent.id, "status": intent.status})
    return _answer(intent)
