"""Stripe webhooks: verified on the raw body, stored once by event id, processed exactly once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, status
from fastapi.responses import JSONResponse

from api.deps import DatabaseDep, SettingsDep
from ingest.db import utcnow
from ingest.webhooks import EventAck, EventJob, EventProcessingFailed, receive_event, verify_event

router = APIRouter(tags=["webhooks"])


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
)
async def stripe_webhook(
    request: Request,
    settings: SettingsDep,
    database: DatabaseDep,
    stripe_signature: Annotated[str | None, Header()] = None,
) -> EventAck | JSONResponse:
    """Receive one Stripe event: 200 once it (and the state change it causes) is committed."""
    body = await request.body()
    event = verify_event(body, stripe_signature, settings.stripe_webhook_secret)
    job = EventJob(event=event, source="webhook", received_at=utcnow(), settings=settings)
    try:
        outcome = await receive_event(database, job)
    except EventProcessingFailed as exc:
        return JSONResponse(
            {
                "error": "processing_failed",
                "message": "processing this event failed; it is kept with its error and the next delivery retries it",
                "stripe_event_id": exc.stripe_event_id,
            },
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    return EventAck(duplicate=outcome.duplicate)
