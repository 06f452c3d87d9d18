"""A loopback fake of Meta's Conversions API (CONTRACT.md "Outbound wire formats", Meta).

Accepts `POST /{version}/{pixel_id}/events?access_token=<token>`. Checks, in order, answering as the Graph API
does (HTTP 400 `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`): the path, a version like
`v21.0` and the configured pixel id (code 100); the access token (code 190, OAuthException); a JSON object
body with only known top-level keys and `data` a list of 1..1000 events (code 100); then every event, the whole
request refused when one is invalid (code 100, subcode 2804xxx): `event_name` a non-empty string; `event_time` an
integer Unix time no older than 7 days and no more than 10 minutes ahead; `action_source` one of Meta's; for
`website`, `event_source_url` an http(s) URL and `user_data.client_user_agent`; `user_data` an object with at least
one identifier; `em`, `ph`, `external_id` lists of 64-char lower-case hex digests (SHA-256), never an email,
phone or id in the clear; `fbp` / `fbc` in Meta's `fb.<n>.<ms>.<id>` shape; no string anywhere that looks like
an email address; `Purchase` with `custom_data.currency` (3 letters) and a numeric `value`.

A valid request is 200 `{"events_received": n, "messages": [], "fbtrace_id"}`. Meta deduplicates a server event
against another with the same event_name and event_id: the fake keeps every accepted event and counts such
repeats in `duplicates`. Beyond the harness's faults it can answer a throttling error code for the next N
requests (`throttle`), and take a request while receiving none of its events (`drop_events`).
"""

from __future__ import annotations

import hmac
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.validation import is_number, parse_json_object, stable_token

MAX_EVENTS = 1000
MAX_AGE_SECONDS = 7 * 86400
MAX_FUTURE_SECONDS = 600
ACTION_SOURCES = frozenset(
    {"email", "website", "app", "phone_call", "chat", "physical_store", "system_generated", "business_messaging",
     "other"}
)  # fmt: skip
TOP_LEVEL_KEYS = frozenset({"data", "test_event_code", "partner_agent", "namespace_id", "upload_tag"})
HASHED_KEYS = ("em", "ph", "external_id", "fn", "ln", "ct", "st", "zp", "country", "ge", "db")
IDENTIFIER_KEYS = frozenset({*HASHED_KEYS, "client_ip_address", "fbp", "fbc", "madid", "anon_id"})
_PATH = re.compile(r"^/(v\d+\.\d+)/([^/]+)/events/?$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_BROWSER_ID = re.compile(r"^fb\.\d\.\d{9,14}\.[A-Za-z0-9_.\-]+$")
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
}


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


class MetaFake:
    """State and ASGI app of the Conversions API fake."""

    def __init__(self, pixel_id: str, access_token: str, clock: Callable[[], float]) -> None:
        self.pixel_id = pixel_id
        self.access_token = access_token
        self.clock = clock
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        self._duplicates = 0
        self._requests = 0
        self._throttle: tuple[int, int] | None = None  # (code, requests left)
        self._drop = 0
        self.app = Starlette(routes=[Route("/{path:path}", self._events_edge, methods=["POST"])])

    def reset(self) -> None:
        """Forget accepted events and the Meta-specific faults."""
        with self._lock:
            self._events.clear()
            self._seen.clear()
            self._duplicates = self._requests = self._drop = 0
            self._throttle = None

    def throttle(self, code: int, count: int = 1) -> None:
        """Answer the next `count` requests with Graph API error `code` (4, 17, 32 or 613: rate limits)."""
        with self._lock:
            self._throttle = (code, count) if count > 0 else None

    def drop_events(self, count: int = 1) -> None:
        """Answer the next `count` valid requests 200 with events_received 0 and a message, keeping nothing."""
        with self._lock:
            self._drop = count

    def state(self) -> dict[str, Any]:
        """The accepted events (with the test_event_code they came with) and the dedup count."""
        with self._lock:
            return {"events": list(self._events), "duplicates": self._duplicates, "requests": self._requests}

    def _trace(self) -> str:
        self._requests += 1
        return stable_token("A", f"{self.pixel_id}:{self._requests}", 23)

    def _error(self, message: str, code: int, *, kind: str = "OAuthException", subcode: int | None = None,
               status: int = 400) -> Response:  # fmt: skip
        with self._lock:
            trace = self._trace()
        error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": trace}
        if subcode is not None:
            error["error_subcode"] = subcode
        return JSONResponse({"error": error}, status_code=status)

    async def _events_edge(self, request: Request) -> Response:
        match = _PATH.match(request.url.path)
        if match is None or match.group(2) != self.pixel_id:
            return self._error(
                f"Unsupported post request. Object with ID '{request.url.path}' does not exist", 100,
                kind="GraphMethodException", subcode=33,
            )  # fmt: skip
        token = request.query_params.get("access_token", "")
        if not hmac.compare_digest(token.encode(), self.access_token.encode()):
            return self._error("Invalid OAuth access token - Cannot parse access token", 190)
        body = parse_json_object(await request.body())
        if body is None:
            return self._error("(#100) The body must be a JSON object", 100)
        problems = self._check_body(body)
        if problems:
            return self._error(f"Invalid parameter: {'; '.join(problems[:5])}", 100, subcode=2804050)
        with self._lock:
            if self._throttle is not None:
                code, left = self._throttle
                self._throttle = (code, left - 1) if left > 1 else None
                throttled: int | None = code
            else:
                throttled = None
            dropping = self._drop > 0 and throttled is None
            if dropping:
                self._drop -= 1
        if throttled is not None:
            return self._error(_THROTTLE_MESSAGES.get(throttled, "rate limited"), throttled)
        events = body["data"]
        with self._lock:
            trace = self._trace()
            if dropping:
                message = "Event dropped: the server did not process it (sandbox drop_events)"
                return JSONResponse({"events_received": 0, "messages": [message], "fbtrace_id": trace})
            for event in events:
                key = (str(event["event_name"]), str(event.get("event_id")))
                if event.get("event_id") is not None and key in self._seen:
                    self._duplicates += 1
                self._seen.add(key)
                self._events.append({**event, "test_event_code": body.get("test_event_code")})
        return JSONResponse({"events_received": len(events), "messages": [], "fbtrace_id": trace})

    def _check_body(self, body: dict[str, Any]) -> list[str]:
        problems = [f"unknown field '{key}'" for key in body if key not in TOP_LEVEL_KEYS]
        if "test_event_code" in body and not isinstance(body["test_event_code"], str):
            problems.append("test_event_code must be a string")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_EVENTS:
            return [*problems, f"data must be a list of 1 to {MAX_EVENTS} events"]
        for index, event in enumerate(data):
            problems += self._check_event(event, f"data[{index}]")
        for path, text in _strings(body, "body"):
            if _EMAIL_LIKE.search(text):
                problems.append(f"{path} looks like a raw email address; send only SHA-256 hashes")
        return problems

    def _check_event(self, event: Any, path: str) -> list[str]:
        if not isinstance(event, dict):
            return [f"{path} must be an object"]
        problems: list[str] = []
        if not isinstance(event.get("event_name"), str) or not event["event_name"]:
            problems.append(f"{path}.event_name is required")
        when = event.get("event_time")
        if not isinstance(when, int) or isinstance(when, bool):
            problems.append(f"{path}.event_time is required, an integer Unix time in seconds")
        elif self.clock() - when > MAX_AGE_SECONDS:
            problems.append(f"{path}.event_time is more than 7 days in the past")
        elif when - self.clock() > MAX_FUTURE_SECONDS:
            problems.append(f"{path}.event_time is in the future")
        if event.get("event_id") is not None and not isinstance(event["event_id"], str):
            problems.append(f"{path}.event_id must be a string")
        source = event.get("action_source")
        if source not in ACTION_SOURCES:
            problems.append(f"{path}.action_source is required, one of {sorted(ACTION_SOURCES)}")
        user_data = event.get("user_data")
        if not isinstance(user_data, dict):
            return [*problems, f"{path}.user_data is required, an object"]
        if source == "website":
            url = event.get("event_source_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                problems.append(f"{path}.event_source_url is required for website events, an http(s) URL")
            if not isinstance(user_data.get("client_user_agent"), str) or not user_data["client_user_agent"]:
                problems.append(f"{path}.user_data.client_user_agent is required for website events")
        if not IDENTIFIER_KEYS & set(user_data):
            problems.append(f"{path}.user_data needs at least one customer information parameter")
        for key in HASHED_KEYS:
            if key not in user_data:
                continue
            values = user_data[key] if isinstance(user_data[key], list) else [user_data[key]]
            if not values or not all(isinstance(v, str) and _SHA256_HEX.match(v) for v in values):
                problems.append(
                    f"{path}.user_data.{key} must be SHA-256 hashes (64 lower-case hex characters)"
                )
        for key in ("fbp", "fbc"):
            if key in user_data and not (
                isinstance(user_data[key], str) and _BROWSER_ID.match(user_data[key])
            ):
                problems.append(f"{path}.user_data.{key} is not in Meta's fb.<n>.<ms>.<id> format")
        if event.get("event_name") == "Purchase":
            custom = event.get("custom_data")
            currency = custom.get("currency") if isinstance(custom, dict) else None
            if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency):
                problems.append(f"{path}.custom_data.currency is required for Purchase, an ISO 4217 code")
            if not isinstance(custom, dict) or not is_number(custom.get("value")):
                problems.append(f"{path}.custom_data.value is required for Purchase, a number")
        return problems
