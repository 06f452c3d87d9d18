"""POST /v1/leads: Step-1 lead capture."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from api.deps import BrowserCallDep
from api.errors import BROWSER_ROUTE, declared
from api.routes.deliveries import WorkerDep
from ingest.leads.schemas import LeadIn, LeadOut
from ingest.leads.service import capture_leads, inline_deliveries, lead_answer, plan_lead

router = APIRouter(responses=BROWSER_ROUTE, tags=["leads"])
log = logging.getLogger(__name__)


@router.post("/v1/leads", response_model_exclude_none=True, responses=declared(409))
async def post_lead(lead_in: LeadIn, call: BrowserCallDep, worker: WorkerDep) -> LeadOut:
    """Store a lead with its consent and outbox rows; same event_id and email again is a duplicate."""
    plan = plan_lead(call.settings, lead_in, call.context)
    captured = await call.database.writer.submit(capture_leads, plan)
    wait_ms = call.settings.attribution_inline_delivery_ms
    inline = inline_deliveries(captured.plan) if worker and wait_ms and not captured.duplicate else {}
    if worker and inline:
        # Wait briefly for MailerLite and the CRM, so the answer can carry subscriber_id / contact_id.
        await worker.wait_for(inline, wait_ms / 1000)
    if captured.duplicate or inline:
        answer = call.database.read(
            lambda conn: lead_answer(captured.plan, duplicate=captured.duplicate, conn=conn)
        )
    else:
        answer = lead_answer(captured.plan, duplicate=False)
    log.info("lead captured", extra={"event_id": str(plan.event_id), "duplicate": captured.duplicate})
    return answer
