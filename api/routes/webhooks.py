"""Stripe webhooks: verified on the raw body, stored once by event id, processed exactly once."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.payments.events import verify_event
from ingest.payments.webhooks import DUPLICATE, IGNORED, PROCESSED, EventAck, EventJob, receive_event
from ingest.store.database import Database

router = APIRouter(tags=["webhooks"])

# The usual answers, rendered once: at webhook rates FastAPI's per-request dependency solving and response
# validation are a visible share of the event loop's time, so the route reads what it needs itself.
_ACK = {
    (status, duplicate): EventAck(duplicate=duplicate, status=status)
    .model_dump_json(exclude_none=True)
    .encode()
    for status in (PROCESSED, IGNORED, DUPLICATE)
    for duplicate in (False, True)
}
_SIGNATURE_HEADER = {
    "name": "stripe-signature",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "Stripe's `t=...,v1=...` signature of the raw body",
}


@router.post(
    "/v1/webhooks/stripe",
    response_model=EventAck,
    responses={
        200: {
            "description": "committed; `status` rejected (with `reason`): a signed event that can never be "
            "processed, kept for review and acknowledged so that Stripe stops retrying it"
        },
        400: {
            "description": "missing or bad signature, or a body that is not a Stripe event (nothing stored)"
        },
        500: {
            "description": "processing failed; the error is kept on the event row and a retry processes it"
        },
        503: {"description": "STRIPE_WEBHOOK_SECRET is not set, or the store cannot write now (Retry-After)"},
    },
    openapi_extra={"parameters": [_SIGNATURE_HEADER]},
)
async def stripe_webhook(request: Request) -> Response:
    """Receive one Stripe event: 200 once it (and the state change it causes) is committed."""
    settings: Settings = request.app.state.settings
    database: Database = request.app.state.database
    body = await request.body()
    event = verify_event(body, request.headers.get("stripe-signature"), settings.stripe_webhook_secrets())
    job = EventJob(event=event, source="webhook", received_at=utcnow(), settings=settings)
    outcome = await receive_event(database, job)  # EventProcessingFailed: a 500, so Stripe retries
    answer = _ACK.get((outcome.status, outcome.duplicate))
    if (
        answer is None
    ):  # rejected: kept for review, acknowledged with the reason so that Stripe stops retrying
        answer = (
            EventAck(duplicate=outcome.duplicate, status=outcome.status, reason=outcome.reason)
            .model_dump_json()
            .encode()
        )
    return Response(answer, media_type="application/json")
