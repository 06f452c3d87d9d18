"""MailerLite: the subscriber upsert (and unsubscribe) of POST /api/subscribers, the subscriber id in its
answer, and the custom fields the upsert fills (`attribution mailerlite setup-fields`).

Consent: only the opt-in itself (the upsert lead capture plans) sets `status: active`, the groups and
`opted_in_at`. The upserts a payment or refund plans (they carry `payment_status`) update fields only, so someone
who unsubscribed in MailerLite stays unsubscribed; only a withdrawal sets a status, `unsubscribed`.

MailerLite silently drops `fields` keys that were never created, so the worker ensures ours exist before its
first MailerLite send (`ensure_mailerlite_fields`) and holds MailerLite deliveries while it cannot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind
from ingest.outbox.destinations.rendering import (
    UTM_KEYS,
    compact_json,
    furthest,
    iso_or_none,
    lead_email,
    marketing_consent,
    text_or_none,
)
from ingest.outbox.destinations.transport import USER_AGENT, OutgoingRequest
from ingest.outbox.records import ClaimedDelivery

MAILERLITE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# A delivery rendered late carries the newest payment state.
_PAYMENT_STATUS_OF_LEAD = {"lead": "pending", "paid": "paid", "refunded": "refunded"}
_PAYMENT_STATUS_RANK = {"pending": 0, "paid": 1, "refunded": 2}

# The MailerLite custom fields the subscriber upsert fills (name and phone are MailerLite's own fields).
MAILERLITE_CUSTOM_FIELDS = (
    "event_id", "user_session_id", "lead_created_at", "checkout_started_at", "payment_status",
    "marketing_consent", "consent_method", "consent_timestamp", "consent_ip", "crm_contact_id",
    *UTM_KEYS,
)  # fmt: skip


class MailerLiteSetupError(Exception):
    """MailerLite refused to list or create the custom fields; the message says what it answered."""


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def mailerlite_body(claimed: ClaimedDelivery, settings: Settings) -> dict[str, Any]:
    """The subscriber upsert (or unsubscribe) body of POST /api/subscribers."""
    email = lead_email(claimed)
    if claimed.kind == DeliveryKind.UNSUBSCRIBE:
        return {"email": email, "status": "unsubscribed"}
    lead = claimed.lead or {}
    consent = marketing_consent(claimed)
    payment_status = furthest(
        [claimed.payload.get("payment_status"), _PAYMENT_STATUS_OF_LEAD.get(lead.get("status") or "")],
        _PAYMENT_STATUS_RANK,
    )
    fields: dict[str, Any] = {
        "name": lead.get("full_name") or claimed.payload.get("name"),
        "phone": lead.get("phone"),
        "event_id": text_or_none(claimed.event_id),
        "user_session_id": text_or_none(claimed.user_session_id),
        "lead_created_at": iso_or_none(lead.get("lead_created_at")),
        "checkout_started_at": iso_or_none(lead.get("checkout_started_at")),
        "payment_status": payment_status,
        "marketing_consent": "true" if consent else "false",
        "consent_method": lead.get("consent_method"),
        "consent_timestamp": iso_or_none(lead.get("consent_at")),
        "consent_ip": lead.get("consent_ip"),
        "crm_contact_id": lead.get("crm_contact_id"),
        **{key: lead.get(key) for key in UTM_KEYS},
    }
    body: dict[str, Any] = {"email": email, "fields": fields}
    if not is_opt_in(claimed.payload):
        return body  # an update after the opt-in: never a status, so an unsubscribe made in MailerLite holds
    if settings.mailerlite_group_id:
        body["groups"] = [settings.mailerlite_group_id]
    if consent:
        body["status"] = "active"
        if lead.get("consent_at") is not None:
            body["opted_in_at"] = lead["consent_at"].strftime(MAILERLITE_DATE_FORMAT)
        if _is_ip(lead.get("consent_ip")):
            body["optin_ip"] = str(lead["consent_ip"])
    return body


UPDATE_ONLY = "update_only"  # a payload key: this upsert updates a subscriber MailerLite holds, never opts in


def is_opt_in(payload: Mapping[str, Any]) -> bool:
    """Whether a subscriber upsert is the opt-in (lead capture's, which may set status, groups, opted_in_at).

    Every later upsert (a payment's or refund's, carrying payment_status; a repair of a subscriber MailerLite
    already holds, marked UPDATE_ONLY) sends fields only, so it never re-subscribes someone who unsubscribed.
    """
    return not payload.get(UPDATE_ONLY) and "payment_status" not in payload


def render_mailerlite(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> OutgoingRequest:
    """POST {MAILERLITE_BASE_URL}/api/subscribers with the API key."""
    assert settings.mailerlite_api_key is not None  # a client exists only for a configured destination
    return OutgoingRequest(
        url=settings.mailerlite_base_url + "/api/subscribers",
        body=compact_json(mailerlite_body(claimed, settings)),
        headers={
            "Authorization": f"Bearer {settings.mailerlite_api_key.get_secret_value()}",
            "Idempotency-Key": claimed.idempotency_key,
        },
    )


def mailerlite_subscriber_id(answer: Any) -> str | None:
    """The subscriber id in MailerLite's `{data: {id}}` answer."""
    data = answer.get("data") if isinstance(answer, dict) else None
    return text_or_none(data.get("id")) if isinstance(data, dict) and data.get("id") is not None else None


def setup_mailerlite_fields(settings: Settings, http: httpx.Client) -> tuple[list[str], list[str]]:
    """Create the custom fields the upsert fills that MailerLite lacks; return (created, already there)."""
    assert settings.mailerlite_api_key is not None
    base = settings.mailerlite_base_url
    headers = {
        "Authorization": f"Bearer {settings.mailerlite_api_key.get_secret_value()}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    existing: set[str] = set()
    url: str | None = f"{base}/api/fields?limit=100"
    while url:
        answer = http.get(url, headers=headers)
        if answer.status_code != 200:
            raise MailerLiteSetupError(
                f"listing fields answered HTTP {answer.status_code}: {answer.text[:300]}"
            )
        try:
            page = answer.json()
            existing |= {str(item.get("key")) for item in page.get("data", [])}
            links = page.get("links") or {}
        except (
            ValueError,
            AttributeError,
            TypeError,
        ):  # a 200 that is not MailerLite's JSON (a proxy's page)
            raise MailerLiteSetupError(
                f"listing fields answered what is not MailerLite's JSON: {answer.text[:200]}"
            ) from None
        url = links.get("next") if isinstance(links, dict) else None
    created, present = [], []
    for key in MAILERLITE_CUSTOM_FIELDS:
        if key in existing:
            present.append(key)
            continue
        answer = http.post(f"{base}/api/fields", json={"name": key, "type": "text"}, headers=headers)
        if answer.status_code in (200, 201):
            created.append(key)
        elif answer.status_code == 422 and "taken" in answer.text:
            present.append(key)  # created by a concurrent run between our list and our create
        else:
            raise MailerLiteSetupError(
                f"creating field {key} answered HTTP {answer.status_code}: {answer.text[:300]}"
            )
    return created, present


def ensure_mailerlite_fields(settings: Settings) -> list[str]:
    """Create whichever of our custom fields MailerLite lacks (the worker's check before its first send); return
    the keys created. Raises MailerLiteSetupError, or httpx.HTTPError when MailerLite cannot be reached."""
    with httpx.Client(timeout=settings.attribution_delivery_timeout_seconds) as http:
        created, _ = setup_mailerlite_fields(settings, http)
    return created
