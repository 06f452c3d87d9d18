"""Checkout payments: the PaymentIntent of a stored lead."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from api.deps import DatabaseDep, RateLimited, SettingsDep
from ingest.payments.checkout import (
    Checkout,
    PaymentIntentIn,
    PaymentIntentOut,
    StripeUnavailable,
    stripe_client,
)

router = APIRouter(tags=["payments"])
_checkout_guard = threading.Lock()


def _checkout(request: Request, settings: SettingsDep, database: DatabaseDep) -> Checkout:
    # One Checkout per app (it holds the SDK client and the per-lead locks), made on first use.
    with _checkout_guard:
        checkout: Checkout | None = getattr(request.app.state, "checkout", None)
        if checkout is None:
            checkout = Checkout(settings, database, stripe_client(settings))
            request.app.state.checkout = checkout
    return checkout


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
def create_payment_intent(
    body: PaymentIntentIn, request: Request, settings: SettingsDep, database: DatabaseDep
) -> PaymentIntentOut | JSONResponse:
    """The lead's PaymentIntent, with its attribution in the metadata; the same event_id gives the same one."""
    try:
        return _checkout(request, settings, database).payment_intent(body.event_id)
    except StripeUnavailable as exc:
        return JSONResponse(
            {"error": "stripe_unavailable", "message": str(exc)}, status_code=status.HTTP_502_BAD_GATEWAY
        )
