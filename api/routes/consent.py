"""POST /v1/consent: a consent decision from the consent modal."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from api.deps import BrowserCallDep
from api.errors import BROWSER_ROUTE
from ingest.leads.consent import consent_row, record_consents
from ingest.leads.schemas import ConsentIn, ConsentOut

router = APIRouter(responses=BROWSER_ROUTE, tags=["consent"])
log = logging.getLogger(__name__)


@router.post("/v1/consent")
async def post_consent(consent_in: ConsentIn, call: BrowserCallDep) -> ConsentOut:
    """Append a consent decision to the ledger; a withdrawal suppresses deliveries not yet sent."""
    row = consent_row(
        call.settings,
        consent_in,
        user_session_id=consent_in.user_session_id,
        event_id=consent_in.event_id,
        source="consent",
        context=call.context,
    )
    record = await call.database.writer.submit(record_consents, row)
    log.info(
        "consent recorded",
        extra={
            "event_id": str(consent_in.event_id) if consent_in.event_id else None,
            "user_session_id": str(consent_in.user_session_id),
            "suppressed_deliveries": record.suppressed_deliveries,
        },
    )
    return ConsentOut(consent=record)
