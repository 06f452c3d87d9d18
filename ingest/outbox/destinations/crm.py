"""The CRM: the generic contact webhook body, signed with HMAC-SHA256 when a secret is set, and the contact id
in its answer."""

from __future__ import annotations

import calendar
import hashlib
import hmac
from datetime import datetime
from typing import Any

from ingest.core.settings import Settings
from ingest.outbox.destinations.rendering import (
    UTM_KEYS,
    compact_json,
    furthest,
    iso_or_none,
    lead_email,
    text_or_none,
)
from ingest.outbox.destinations.transport import OutgoingRequest
from ingest.outbox.records import ClaimedDelivery

SIGNATURE_HEADER = "X-Attribution-Signature"

# A delivery rendered late carries the newest lead state.
_LEAD_STATUS_RANK = {"lead": 0, "paid": 1, "refunded": 2}


def crm_body(claimed: ClaimedDelivery) -> dict[str, Any]:
    """The generic CRM webhook body; the contact_id learned earlier rides along on later updates."""
    lead = claimed.lead or {}
    amount_cents = claimed.payload.get("amount_cents")
    body: dict[str, Any] = {
        "event_id": text_or_none(claimed.event_id) or claimed.payload.get("payment_intent_id"),
        "name": lead.get("full_name") or claimed.payload.get("name"),
        "email": lead_email(claimed),
        "phone": lead.get("phone"),
        "amount": amount_cents / 100 if isinstance(amount_cents, int | float) else None,
        "lead_status": furthest(
            [claimed.payload.get("lead_status"), lead.get("status"), "lead"], _LEAD_STATUS_RANK
        ),
        "lead_created_at": iso_or_none(lead.get("lead_created_at")),
        **{key: lead.get(key) for key in UTM_KEYS},
    }
    if body["amount"] is not None and claimed.payload.get("currency"):
        body["currency"] = str(claimed.payload["currency"]).upper()
    if lead.get("crm_contact_id"):
        body["contact_id"] = lead["crm_contact_id"]
    return body


def crm_signature(secret: str, body: bytes, unix_seconds: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the X-Attribution-Signature value."""
    digest = hmac.new(secret.encode(), f"{unix_seconds}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={unix_seconds},v1={digest}"


def render_crm(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> OutgoingRequest:
    """POST CRM_WEBHOOK_URL with Idempotency-Key, the bearer token and the HMAC signature when configured."""
    assert settings.crm_webhook_url is not None
    body = compact_json(crm_body(claimed))
    headers = {"Idempotency-Key": claimed.idempotency_key}
    if settings.crm_api_token is not None:
        headers["Authorization"] = f"Bearer {settings.crm_api_token.get_secret_value()}"
    if settings.crm_signing_secret is not None:
        headers[SIGNATURE_HEADER] = crm_signature(
            settings.crm_signing_secret.get_secret_value(), body, calendar.timegm(now.timetuple())
        )
    return OutgoingRequest(url=settings.crm_webhook_url, body=body, headers=headers)


def crm_contact_id(answer: Any) -> str | None:
    """The contact id in the CRM's answer: `contact_id`, else `id`."""
    if not isinstance(answer, dict):
        return None
    found = answer.get("contact_id") or answer.get("id")
    return text_or_none(found) if found is not None else None
