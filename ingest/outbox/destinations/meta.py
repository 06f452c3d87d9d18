"""Meta Conversions API: one server event per delivery (`Lead` at lead capture, `Purchase` for a succeeded
payment) carrying the journey's event_id, which the browser Pixel gets as eventID so Meta keeps one of the two;
user data hashed the way Meta asks, and what Meta's answers mean (throttling codes, events it did not take)."""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind
from ingest.outbox.destinations.rendering import CannotRender, compact_json, text_or_none
from ingest.outbox.destinations.transport import AnswerFault, HttpAnswer, OutgoingRequest
from ingest.outbox.records import ClaimedDelivery

EVENT_NAMES = {DeliveryKind.GENERATE_LEAD: "Lead", DeliveryKind.PURCHASE: "Purchase"}
# Meta refuses events older than 7 days; stay a minute clear of the edge, the request takes time to arrive.
MAX_EVENT_AGE = timedelta(days=7)
_AGE_MARGIN = timedelta(minutes=1)
# Graph API error codes that mean "not now": API too many calls (4), user request limit (17), page request
# limit (32), rate limit on a specific call (613). Everything else in a 4xx is permanent.
THROTTLING_CODES = frozenset({4, 17, 32, 613})


class TooOld(CannotRender):
    """The event happened longer ago than Meta accepts; sending it (now or later) can only be refused."""


def normalise_email_for_meta(email: str) -> str:
    """Meta's rule: trimmed and lower-cased (no provider-specific rewriting, unlike Google's)."""
    return email.strip().lower()


def normalise_phone_for_meta(phone: str) -> str:
    """Digits only, with the country code and without '+' (the lead's phone is stored in E.164)."""
    return re.sub(r"\D", "", phone)


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of a UTF-8 string."""
    return hashlib.sha256(value.encode()).hexdigest()


def event_time(claimed: ClaimedDelivery) -> datetime:
    """When the event happened: fixed in the payload when it was planned, else when the delivery was made."""
    stamped = claimed.payload.get("event_time")
    if stamped:
        return datetime.fromisoformat(str(stamped)).replace(tzinfo=None)
    return claimed.created_at


def _user_data(claimed: ClaimedDelivery) -> dict[str, Any]:
    lead = claimed.lead or {}
    user_data: dict[str, Any] = {}
    email = lead.get("email") or claimed.payload.get("email")
    if email:
        user_data["em"] = [sha256_hex(normalise_email_for_meta(str(email)))]
    if lead.get("phone"):
        user_data["ph"] = [sha256_hex(normalise_phone_for_meta(str(lead["phone"])))]
    if claimed.user_session_id is not None:
        user_data["external_id"] = [sha256_hex(str(claimed.user_session_id).lower())]
    for ours, theirs in (
        ("consent_ip", "client_ip_address"),
        ("consent_user_agent", "client_user_agent"),
        ("fbp", "fbp"),
        ("fbc", "fbc"),
    ):
        if lead.get(ours):
            user_data[theirs] = str(lead[ours])
    return user_data


def meta_event(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> dict[str, Any]:
    """One server event; raises TooOld beyond Meta's 7 days and CannotRender when there is nothing to send."""
    name = EVENT_NAMES.get(DeliveryKind(claimed.kind))
    if name is None:
        raise CannotRender(f"Meta has no event for a {claimed.kind} delivery")
    happened = min(event_time(claimed), now)
    if now - happened > MAX_EVENT_AGE - _AGE_MARGIN:
        raise TooOld(
            f"event_time {happened:%Y-%m-%d %H:%M:%S} UTC is older than the 7 days Meta accepts "
            f"({(now - happened).total_seconds() / 86400:.1f} days at send time)"
        )
    lead = claimed.lead or {}
    source_url = lead.get("landing_page")
    if not source_url:
        raise CannotRender(
            f"no landing_page stored for event_id {claimed.event_id}; Meta needs it as event_source_url"
        )
    custom_data: dict[str, Any] = {"content_ids": [settings.product_id], "content_type": "product"}
    if claimed.kind == DeliveryKind.PURCHASE:
        currency = claimed.payload.get("currency") or settings.product_currency
        custom_data |= {
            "currency": str(currency).upper(),
            "value": claimed.payload.get("value"),
            "order_id": text_or_none(claimed.payload.get("transaction_id")),
        }
    return {
        "event_name": name,
        "event_time": calendar.timegm(happened.timetuple()),
        "event_id": text_or_none(claimed.event_id),
        "action_source": "website",
        "event_source_url": str(source_url),
        "user_data": _user_data(claimed),
        "custom_data": {key: value for key, value in custom_data.items() if value is not None},
    }


def meta_body(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> dict[str, Any]:
    """The Conversions API body: one event, and META_TEST_EVENT_CODE when set (Meta's Test Events tool)."""
    body: dict[str, Any] = {"data": [meta_event(claimed, settings, now)]}
    if settings.meta_test_event_code:
        body["test_event_code"] = settings.meta_test_event_code
    return body


@functools.lru_cache(maxsize=8)
def meta_url(base_url: str, api_version: str, pixel_id: str, access_token: str) -> str:
    """{META_BASE_URL}/{META_API_VERSION}/{META_PIXEL_ID}/events?access_token=... (worked out once)."""
    return f"{base_url}/{quote(api_version)}/{quote(pixel_id)}/events?" + urlencode(
        {"access_token": access_token}
    )


def render_meta(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> OutgoingRequest:
    """POST the event to the pixel's /events edge."""
    assert settings.meta_pixel_id is not None and settings.meta_access_token is not None
    url = meta_url(
        settings.meta_base_url,
        settings.meta_api_version,
        settings.meta_pixel_id,
        settings.meta_access_token.get_secret_value(),
    )
    return OutgoingRequest(
        url=url,
        body=compact_json(meta_body(claimed, settings, now)),
        headers={"Idempotency-Key": claimed.idempotency_key},
    )


def meta_answer_fault(answer: HttpAnswer, parsed: Any) -> AnswerFault | None:
    """What Meta's answer says beyond its status: a throttling code in a 4xx is worth a retry, and a 2xx that
    received fewer events than sent (one) is a failure, Meta's messages kept. None: the status says it all."""
    if answer.is_success:
        received = parsed.get("events_received") if isinstance(parsed, dict) else None
        if isinstance(received, int) and not isinstance(received, bool) and received >= 1:
            return None
        messages = parsed.get("messages") if isinstance(parsed, dict) else None
        return AnswerFault(
            retryable=True, error=f"Meta received {received or 0} of 1 events; messages: {messages or []}"
        )
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or error.get("code") not in THROTTLING_CODES or answer.status >= 500:
        return None  # 5xx and 429 are retried, other 4xx are permanent, by their status alone
    subcode = f"/{error['error_subcode']}" if error.get("error_subcode") is not None else ""
    return AnswerFault(
        retryable=True,
        error=f"HTTP {answer.status}: Meta throttling, error {error['code']}{subcode}: {error.get('message')}",
    )
