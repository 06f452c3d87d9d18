"""POST /v1/leads: Step-1 lead capture."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from api.deps import ContextDep, DatabaseDep, RateLimited, SettingsDep
from ingest.leads import capture_leads, lead_answer, plan_lead
from ingest.models import LeadIn, LeadOut

router = APIRouter(tags=["leads"])
log = logging.getLogger(__name__)


@router.post("/v1/leads", dependencies=[RateLimited], response_model_exclude_none=True)
async def post_lead(
    lead_in: LeadIn, settings: SettingsDep, database: DatabaseDep, context: ContextDep
) -> LeadOut:
    """Store a lead with its consent and outbox rows; same event_id and email again is a duplicate."""
    plan = plan_lead(settings, lead_in, context)
    captured = await database.writer.submit(capture_leads, plan)
    if captured.duplicate:
        answer = database.read(lambda conn: lead_answer(captured.plan, duplicate=True, conn=conn))
    else:
        answer = lead_answer(captured.plan, duplicate=False)
    log.info("lead captured", extra={"event_id": str(plan.event_id), "duplicate": captured.duplicate})
    return answer
