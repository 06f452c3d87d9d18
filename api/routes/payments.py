"""Checkout payments: the PaymentIntent of a stored lead."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CheckoutDep, RateLimited
from api.errors import BROWSER_ROUTE
from ingest.payments.checkout import PaymentIntentIn, PaymentIntentOut

router = APIRouter(responses=BROWSER_ROUTE, tags=["payments"])


@router.post(
    "/v1/payment-intents",
    response_model=PaymentIntentOut,
    dependencies=[RateLimited],
    responses={
        404: {"description": "no lead with this event_id"},
        502: {"description": "Stripe could not be reached or refused the call"},
        503: {"description": "payments are not configured (no price or no Stripe key)"},
    },
)
def create_payment_intent(body: PaymentIntentIn, checkout: CheckoutDep) -> PaymentIntentOut:
    """The lead's PaymentIntent, with its attribution in the metadata; the same event_id gives the same one."""
    return checkout.payment_intent(body.event_id)
