"""MailerLite, CRM and sGTM (GA4 Measurement Protocol) clients: the wire bodies of CONTRACT.md, rendered at
send time from the delivery row and the current lead row, with their headers, signature and hashing."""

from __future__ import annotations

import asyncio
import calendar
import functools
import hashlib
import hmac
import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httptools
import httpx
import orjson

from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.outbox.repository import UNSUBSCRIBE_KIND, ClaimedDelivery

USER_AGENT = "attribution-ingest/0.1"
SIGNATURE_HEADER = "X-Attribution-Signature"
MAILERLITE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# State only moves forward (DESIGN.md invariant 7): a delivery rendered late carries the newest state.
_LEAD_STATUS_RANK = {"lead": 0, "paid": 1, "refunded": 2}
_PAYMENT_STATUS_OF_LEAD = {"lead": "pending", "paid": "paid", "refunded": "refunded"}
_PAYMENT_STATUS_RANK = {"pending": 0, "paid": 1, "refunded": 2}
_UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")

# GA4 Measurement Protocol limits (https://developers.google.com/analytics/devguides/collection/protocol/ga4).
GA4_MAX_NAME_CHARS = 40
GA4_MAX_VALUE_CHARS = 100
GA4_MAX_PARAMS = 25
GA4_MAX_BACKDATE = timedelta(hours=72)
_GA4_BACKDATE_MARGIN = timedelta(minutes=15)  # the request takes time to arrive; stay clear of the edge
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# The MailerLite custom fields the subscriber upsert fills (name and phone are MailerLite's own fields).
MAILERLITE_CUSTOM_FIELDS = (
    "event_id", "user_session_id", "lead_created_at", "checkout_started_at", "payment_status",
    "marketing_consent", "consent_method", "consent_timestamp", "consent_ip", "crm_contact_id",
    *_UTM_KEYS,
)  # fmt: skip


class CannotRender(Exception):
    """The delivery cannot be turned into a request (e.g. no lead and no email to send); retrying won't help."""


class MailerLiteSetupError(Exception):
    """MailerLite refused to list or create the custom fields; the message says what it answered."""


@dataclass(frozen=True)
class OutgoingRequest:
    """One HTTP POST, ready to send."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _forward(candidates: list[str | None], rank: Mapping[str, int]) -> str | None:
    known = [value for value in candidates if value is not None and value in rank]
    return max(known, key=rank.__getitem__) if known else None


def _json(body: Mapping[str, Any]) -> bytes:
    # Compact UTF-8, the bytes json.dumps(separators=(",", ":"), ensure_ascii=False) gives, ~10x faster.
    return orjson.dumps(body)


def _email(claimed: ClaimedDelivery) -> str:
    lead = claimed.lead or {}
    email = lead.get("email") or claimed.payload.get("email")
    if not email:
        raise CannotRender(f"no lead stored for event_id {claimed.event_id}, so there is no email to send")
    return str(email)


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _marketing_consent(claimed: ClaimedDelivery) -> bool:
    if claimed.consent_marketing is not None:
        return claimed.consent_marketing
    return bool((claimed.lead or {}).get("marketing_consent"))


# --- MailerLite ---------------------------------------------------------------------------------------------


def mailerlite_body(claimed: ClaimedDelivery, settings: Settings) -> dict[str, Any]:
    """The subscriber upsert (or unsubscribe) body of POST /api/subscribers."""
    email = _email(claimed)
    if claimed.kind == UNSUBSCRIBE_KIND:
        return {"email": email, "status": "unsubscribed"}
    lead = claimed.lead or {}
    consent = _marketing_consent(claimed)
    payment_status = _forward(
        [claimed.payload.get("payment_status"), _PAYMENT_STATUS_OF_LEAD.get(lead.get("status") or "")],
        _PAYMENT_STATUS_RANK,
    )
    fields: dict[str, Any] = {
        "name": lead.get("full_name") or claimed.payload.get("name"),
        "phone": lead.get("phone"),
        "event_id": _text(claimed.event_id),
        "user_session_id": _text(claimed.user_session_id),
        "lead_created_at": _iso(lead.get("lead_created_at")),
        "checkout_started_at": _iso(lead.get("checkout_started_at")),
        "payment_status": payment_status,
        "marketing_consent": "true" if consent else "false",
        "consent_method": lead.get("consent_method"),
        "consent_timestamp": _iso(lead.get("consent_at")),
        "consent_ip": lead.get("consent_ip"),
        "crm_contact_id": lead.get("crm_contact_id"),
        **{key: lead.get(key) for key in _UTM_KEYS},
    }
    body: dict[str, Any] = {"email": email, "fields": fields}
    if settings.mailerlite_group_id:
        body["groups"] = [settings.mailerlite_group_id]
    if consent:
        body["status"] = "active"
        if lead.get("consent_at") is not None:
            body["opted_in_at"] = lead["consent_at"].strftime(MAILERLITE_DATE_FORMAT)
        if _is_ip(lead.get("consent_ip")):
            body["optin_ip"] = str(lead["consent_ip"])
    return body


def render_mailerlite(claimed: ClaimedDelivery, settings: Settings, now: datetime) -> OutgoingRequest:
    """POST {MAILERLITE_BASE_URL}/api/subscribers with the API key."""
    assert settings.mailerlite_api_key is not None  # a client exists only for a configured destination
    return OutgoingRequest(
        url=settings.mailerlite_base_url.rstrip("/") + "/api/subscribers",
        body=_json(mailerlite_body(claimed, settings)),
        headers={
            "Authorization": f"Bearer {settings.mailerlite_api_key.get_secret_value()}",
            "Idempotency-Key": claimed.idempotency_key,
        },
    )


def mailerlite_subscriber_id(answer: Any) -> str | None:
    """The subscriber id in MailerLite's `{data: {id}}` answer."""
    data = answer.get("data") if isinstance(answer, dict) else None
    return _text(data.get("id")) if isinstance(data, dict) and data.get("id") is not None else None


# --- CRM ----------------------------------------------------------------------------------------------------


def crm_body(claimed: ClaimedDelivery) -> dict[str, Any]:
    """The generic CRM webhook body; the contact_id learned earlier rides along on later updates."""
    lead = claimed.lead or {}
    amount_cents = claimed.payload.get("amount_cents")
    body: dict[str, Any] = {
        "event_id": _text(claimed.event_id) or claimed.payload.get("payment_intent_id"),
        "name": lead.get("full_name") or claimed.payload.get("name"),
        "email": _email(claimed),
        "phone": lead.get("phone"),
        "amount": amount_cents / 100 if isinstance(amount_cents, int | float) else None,
        "lead_status": _forward(
            [claimed.payload.get("lead_status"), lead.get("status"), "lead"], _LEAD_STATUS_RANK
        ),
        "lead_created_at": _iso(lead.get("lead_created_at")),
        **{key: lead.get(key) for key in _UTM_KEYS},
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
    body = _json(crm_body(claimed))
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
    return _text(found) if found is not None else None


# --- sGTM / GA4 Measurement Protocol ------------------------------------------------------------------------


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
    if value is None and claimed.kind == "generate_lead" and settings.product_price_cents:
        value = settings.product_price_cents / 100
    if value is not None and not currency:
        currency = settings.product_currency
    params: dict[str, Any] = {
        "transaction_id": payload.get("transaction_id"),
        "value": value,
        "currency": str(currency).upper() if currency else None,
        "event_id": _text(claimed.event_id),
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
    granted = "GRANTED" if _marketing_consent(claimed) else "DENIED"
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
        body=_json(sgtm_body(claimed, settings, now)),
        headers={"Idempotency-Key": claimed.idempotency_key},
    )


# --- clients ------------------------------------------------------------------------------------------------

Renderer = Callable[[ClaimedDelivery, Settings, datetime], OutgoingRequest]
IdParser = Callable[[Any], "str | None"]

RENDERERS: dict[Destination, Renderer] = {
    Destination.MAILERLITE: render_mailerlite,
    Destination.CRM: render_crm,
    Destination.SGTM: render_sgtm,
}
ID_PARSERS: dict[Destination, IdParser] = {
    Destination.MAILERLITE: mailerlite_subscriber_id,
    Destination.CRM: crm_contact_id,
    Destination.SGTM: lambda answer: None,
}


def destination_limits(settings: Settings, destination: Destination) -> tuple[int, int]:
    """(concurrency, requests per minute; 0 = unlimited) of one destination."""
    return {
        Destination.MAILERLITE: (settings.mailerlite_concurrency, settings.mailerlite_requests_per_minute),
        Destination.CRM: (settings.crm_concurrency, settings.crm_requests_per_minute),
        Destination.SGTM: (settings.sgtm_concurrency, settings.sgtm_requests_per_minute),
    }[destination]


@dataclass(frozen=True)
class HttpAnswer:
    """What a destination answered: status, lower-cased headers and the raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300


_BREAKS = re.compile(r"[\r\n]")


class TransportError(Exception):
    """The request got no complete HTTP answer: refused, reset or closed connection, or an unparsable answer."""


@functools.lru_cache(maxsize=64)
def _target(url: str) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, the request line's head up to the Host header) of a URL, worked out once."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    host_header = host if port == default else f"{host}:{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")
    return parts.scheme, parts.hostname, port, head


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; httptools parses the answers."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._header_name = ""
        self._headers_done = False
        self.reusable = False
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"invalid HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        framed = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "")
        if self._headers_done and not framed:
            self._complete()  # an answer without a length ends when the server closes the connection
        elif exc is not None:
            self._fail(TransportError(f"{type(exc).__name__}: {exc}".rstrip(": ")))
        else:
            self._fail(TransportError("the server closed the connection before answering"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name.decode("latin-1").lower()
            self._headers[self._header_name] = value.decode("latin-1")
        else:  # a header value split across reads
            self._headers[self._header_name] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    # the pool's side

    def request(self, data: bytes, deadline: float) -> asyncio.Future[HttpAnswer]:
        """Write one request; the future is answered with the whole response, or TimeoutError at `deadline`."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # One timer handle per request: asyncio.timeout() costs several times more on this hot path.
        self._timer = loop.call_at(deadline, self._time_out)
        self._headers, self._body, self._headers_done, self.reusable = {}, [], False, False
        self._transport.write(data)
        return self._waiter

    def _time_out(self) -> None:
        self._fail(TimeoutError("no complete answer within the delivery timeout"))
        self.close()

    def close(self) -> None:
        """Drop the connection (after a timeout or a bad answer it cannot carry another request)."""
        self.closed = True
        self.reusable = False
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _complete(self) -> None:
        self._headers_done = False
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code()
            waiter.set_result(HttpAnswer(status=status, headers=self._headers, body=b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class DestinationClient:
    """One destination: renders a claimed delivery and sends it over its own pool of keep-alive connections.

    The pool is a small HTTP/1.1 client on asyncio and httptools rather than aiohttp's or httpx's: with a few
    dozen requests in flight aiohttp spends ~0.3 ms of CPU per request (httpx several times more) against
    ~0.06 ms here, and on two cores that CPU is what caps the worker (bench/deliveries.py measures it). It
    sends one kind of request (a POST with a JSON body, no redirects, no proxy, no cookies, no compression).
    """

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.destination = destination
        self.settings = settings
        self.concurrency, _ = destination_limits(settings, destination)
        self._timeout = settings.attribution_delivery_timeout_seconds
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots: asyncio.Semaphore | None = None
        self._tls: ssl.SSLContext | None = None
        self._fixed = (
            f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        ).encode("latin-1")

    def render(self, claimed: ClaimedDelivery, now: datetime) -> OutgoingRequest:
        """The request for this delivery as of `now`; raises CannotRender."""
        return RENDERERS[self.destination](claimed, self.settings, now)

    async def send(self, request: OutgoingRequest) -> HttpAnswer:
        """POST it; raises TransportError on connection failures and TimeoutError after the delivery timeout."""
        scheme, host, port, head = _target(request.url)
        if any(_BREAKS.search(f"{name}{value}") for name, value in request.headers.items()):
            raise TransportError("a header contains a line break")
        extra = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        data = (
            b"".join(
                (
                    head,
                    self._fixed,
                    extra.encode("latin-1"),
                    b"Content-Length: %d\r\n\r\n" % len(request.body),
                )
            )
            + request.body
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)  # made in the loop that uses it
        async with self._slots:
            connection: _Connection | None = None
            deadline = asyncio.get_running_loop().time() + self._timeout
            try:
                connection = await self._connection(scheme, host, port, deadline)
                answer = await connection.request(data, deadline)
            except BaseException:
                if connection is not None:
                    connection.close()  # cut off mid-answer, it cannot carry another request
                raise
            finally:
                if connection is not None:
                    self._release(connection, (host, port))
        return answer

    async def _connection(self, scheme: str, host: str, port: int, deadline: float) -> _Connection:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._open.discard(connection)  # the server hung up while it was idle
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise TransportError(f"cannot connect to {host}:{port}: {type(exc).__name__}: {exc}") from exc
        self._open.add(connection)
        return connection

    def _release(self, connection: _Connection, key: tuple[str, int]) -> None:
        if connection.reusable and not connection.closed:
            self._idle.setdefault(key, []).append(connection)
            return
        connection.close()
        self._open.discard(connection)

    def learned_id(self, answer: Any) -> str | None:
        """The subscriber / contact id a 2xx answer carries, if any."""
        return ID_PARSERS[self.destination](answer)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()


def build_clients(settings: Settings) -> dict[Destination, DestinationClient]:
    """A client for each configured destination."""
    enabled = settings.destinations_enabled()
    return {dest: DestinationClient(dest, settings) for dest in Destination if enabled[dest.value]}


# --- MailerLite custom fields (`attribution mailerlite setup-fields`) ---------------------------------------


def setup_mailerlite_fields(settings: Settings, http: httpx.Client) -> tuple[list[str], list[str]]:
    """Create the custom fields the upsert fills that MailerLite lacks; return (created, already there)."""
    assert settings.mailerlite_api_key is not None
    base = settings.mailerlite_base_url.rstrip("/")
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
        page = answer.json()
        existing |= {str(item.get("key")) for item in page.get("data", [])}
        links = page.get("links") or {}
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
