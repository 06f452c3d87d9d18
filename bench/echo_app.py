"""The baseline: a bare FastAPI app that validates the same lead payload and echoes it, storing nothing."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from ingest.leads.schemas import LeadIn

app = FastAPI()


@app.post("/v1/leads")
async def echo_lead(lead: LeadIn) -> LeadIn:
    """Validate and echo a lead."""
    return lead


@app.post("/v1/webhooks/stripe")
async def echo_webhook(request: Request) -> dict[str, Any]:
    """Read the raw body and answer, as a webhook receiver that does nothing would."""
    body = await request.body()
    return {"received": True, "bytes": len(body)}


@app.get("/readyz")
async def ready() -> dict[str, str]:
    """Always ready."""
    return {"status": "ready"}
