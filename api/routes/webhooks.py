"""Stripe webhooks: verified on the raw body, stored once by event id, processed exactly once."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.payments.webhooks import EventAck, EventJob, receive_event, verify_event
from ingest.store.database import Database

router = APIRouter(tags=["webhooks"])

# The two possible answers, rendered once: at webhook rates FastAPI's per-request dependency solving and
# response validation are a visible share of the event loop's time, so the route reads what it needs itself.
_ACK = {duplicate: EventAck(duplicate=duplicate).model_dump_json().encode() for duplicate in (False, True)}
_SIGNATURE_HEADER = {
    "name": "stripe-signature",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Stripe's `t=...,v1=...` signature of the raw body",
}


@router.post(
    "/v1/webhooks/stripe",
    response_model=EventAck,
    responses={
        400: {"description": "missing or bad signature, or a body that is not a Stripe event"},
        500: {
            "description": "processing failed; the error is kept on the event row and a retry processes it"
        },
        503: {"description": "STRIPE_WEBHOOK_SECRET is not set, so no webhook can be verified"},
    },
    openapi_extra={"parameters": [_SIGNATURE_HEADER]},
)
async def stripe_webhook(request: Request) -> Response:
    """Receive one Stripe event: 200 once it (and the state change it causes) is committed."""
    settings: Settings = request.app.state.settings
    database: Database = request.app.state.database
    body = await request.body()
    event = verify_event(body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret)
    job = EventJob(event=event, source="webhook", received_at=utcnow(), settings=settings)
    outcome = await receive_event(database, job)  # EventProcessingFailed: a 500, so Stripe retries
    return Response(_ACK[outcome.duplicate], media_type="application/json")
