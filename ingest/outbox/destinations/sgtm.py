"""sGTM (GA4 Measurement Protocol): one event per delivery, user data hashed the way Google asks, the consent
object, and the endpoint with its measurement id and API secret."""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind
from ingest.outbox.destinations.rendering import compact_json, marketing_consent, text_or_none
from ingest.outbox.destinations.transport import OutgoingRequest
from ingest.outbox.records import ClaimedDelivery

# GA4 Measurement Protocol limits (https://developers.google.com/analytics/devguides/collection/protocol/ga4).
GA4_MAX_NAME_CHARS = 40
GA4_MAX_VALUE_CHARS = 100
GA4_MAX_PARAMS = 25
GA4_MAX_BACKDATE = timedelta(hours=72)
_GA4_BACKDATE_MARGIN = timedelta(minutes=15)  # the request takes time to arrive; stay clear of the edge
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def normalise_email_for_google(email: str) -> str:
    """Google's rules: trim, lower-case, and drop the dots of a gmail.com / googlemail.com local part."""
    local, _, domain = email.strip().lower().rpartition("@")
    if domain in ("gmail.com", "googlemail.com"):
        local = local.replace(".", "")
    return f"{local}@{domain}"


def normalise_phone_for_google(phone: str) -> str:
    """E.164 with its '+': digits only after it (the lead's phone is stored in E.164 already)."""
    digits = re.sub(r"\D", "", phone)
    return f"+{digits}"


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of a UTF-8 string."""
    return hashlib.sha256(value.encode()).hexdigest()


def derive_client_id(seed: str) -> str:
    """A stable GA client id in GA's `<random>.<timestamp>` form, derived from a journey id."""
    digest = hashlib.sha256(seed.encode()).digest()
    random_part = int.from_bytes(digest[:4], "big")
    stamp_part = 1_500_000_000 + int.from_bytes(digest[4:8], "big") % 300_000_000
    return f"{random_part}.{stamp_part}"


def _ga4_value(value: Any) -> Any:
    """A param value inside GA4's limits; an email-looking string is dropped, raw PII never leaves."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = str(value)
    if _EMAIL_LIKE.search(text):
        return None
    return text[:GA4_MAX_VALUE_CHARS]


def _ga4_params(params: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or len(kept) >= GA4_MAX_PARAMS:
            continue
        if name == "items":
            kept[name] = value
            continue
        cleaned = _ga4_value(value)
        if cleaned is not None:
            kept[name[:GA4_MAX_NAME_CHARS]] = cleaned
    return kept


def _sgtm_event(claimed: ClaimedDelivery, settings: Settings) -> dict[str, Any]:
    lead = claimed.lead or {}
    payload = claimed.payload
    value = payload.get("value")
    currency = payload.get("currency")
    if value is None and claimed.kind == DeliveryKind.GENERATE_LEAD and settings.product_price_cents:
        value = settings.product_price_cents / 100
    if value is not None and not currency:
        currency = settings.product_currency
    params: dict[str, Any] = {
        "transaction_id": payload.get("transaction_id"),
        "value": value,
        "currency": str(currency).upper() if currency else None,
        "event_id": text_or_none(claimed.event_id),
        "source": lead.get("utm_source"),
        "medium": lead.get("utm_medium"),
        "campaign": lead.get("utm_campaign"),
        "content": lead.get("utm_content"),
        "term": lead.get("utm_term"),
    }
    if value is not None:
        item = {
            "item_id": settings.product_id,
            "item_name": settings.product_name,
            "price": value,
            "quantity": 1,
        }
        params["items"] = [{key: _ga4_value(val) for key, val in item.items()}]
    return {"name": claimed.kind[:GA4_MAX_NAME_CHARS], "params": _ga4_params(params)}


def sgtm_body(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> dict[str, Any]:
    """The GA4 Measurement Protocol body: one event, hashed user data, the consent object."""
    lead = claimed.lead or {}
    seed = claimed.user_session_id or claimed.event_id or claimed.payload.get("transaction_id")
    client_id = lead.get("ga_client_id") or derive_client_id(str(seed or claimed.delivery_id))
    granted = "GRANTED" if marketing_consent(claimed) else "DENIED"
    body: dict[str, Any] = {
        "client_id": client_id,
        "events": [_sgtm_event(claimed, settings)],
        "consent": {"ad_user_data": granted, "ad_personalization": granted},
    }
    happened = min(claimed.created_at, now)
    if now - happened < GA4_MAX_BACKDATE - _GA4_BACKDATE_MARGIN:
        body["timestamp_micros"] = calendar.timegm(happened.timetuple()) * 1_000_000 + happened.microsecond
    # Hashed user data is for ads matching, so it goes only where the person allowed ads use of their data.
    if granted == "GRANTED":
        user_data: dict[str, list[str]] = {}
        email = lead.get("email")
        if email:
            user_data["sha256_email_address"] = [sha256_hex(normalise_email_for_google(email))]
        if lead.get("phone"):
            user_data["sha256_phone_number"] = [sha256_hex(normalise_phone_for_google(lead["phone"]))]
        if user_data:
            body["user_data"] = user_data
    return body


@functools.lru_cache(maxsize=8)
def sgtm_url(endpoint: str, measurement_id: str | None, api_secret: str | None) -> str:
    """SGTM_ENDPOINT with measurement_id and api_secret added to its query (worked out once, not per send)."""
    extra = [
        (name, value)
        for name, value in (("measurement_id", measurement_id), ("api_secret", api_secret))
        if value
    ]
    parts = urlsplit(endpoint)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(name, value) for name, value in query if name not in dict(extra)]
    return urlunsplit(parts._replace(query=urlencode(kept + extra)))


def render_sgtm(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> OutgoingRequest:
    """POST SGTM_ENDPOINT?measurement_id=&api_secret= with the Measurement Protocol body."""
    assert settings.sgtm_endpoint is not None
    secret = settings.sgtm_api_secret.get_secret_value() if settings.sgtm_api_secret is not None else None
    return OutgoingRequest(
        url=sgtm_url(settings.sgtm_endpoint, settings.sgtm_measurement_id, secret),
        body=compact_json(sgtm_body(claimed, settings, now)),
        headers={"Idempotency-Key": claimed.idempotency_key},
    )
