"""A loopback fake of a server-side GTM container's GA4 Measurement Protocol endpoint.

Accepts `POST` on any path ending in `/collect` (`/mp/collect`, `/g/collect`, ...). When configured, the query
must carry the right `measurement_id` and `api_secret` (403 otherwise).

Deliberately stricter than production: real GA4 answers 204 even to a payload it then drops, so a bad payload is
invisible. This fake validates like GA4's validation server (`/debug/mp/collect`) instead and answers
**400 `{"validationMessages": [{"fieldPath", "description", "validationCode"}]}`** for an invalid payload, 204 for a
valid one. It checks: a JSON object under 130 kB with only known top-level keys; `client_id` a non-empty string;
`events` a list of 1..25; event names <= 40 chars matching `^[A-Za-z][A-Za-z0-9_]*$` and not reserved; <= 25 params
per event, param names like event names and not reserved, values numbers or strings <= 100 chars (`items` a list
of <= 200 objects of the same); `timestamp_micros` (top level or per event) an integer no older than 72 h and no
more than 60 s in the future; `user_data.sha256_email_address` / `sha256_phone_number` lists of 1..3 64-char
lower-case hex digests; no string in `user_data` containing '@' or starting with '+', and no email-like string
anywhere else (no raw PII ever); `consent.ad_user_data` / `ad_personalization` GRANTED or DENIED. Booleans are
not accepted as param values (GA4 documents strings and numbers only).
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

from sandbox.validation import is_number, parse_json_object

MAX_BODY_BYTES = 130_000
MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_ITEMS = 200
MAX_NAME_CHARS = 40
MAX_VALUE_CHARS = 100
MAX_BACKDATE_SECONDS = 72 * 3600
MAX_FUTURE_SKEW_SECONDS = 60
CONSENT_VALUES = ("GRANTED", "DENIED")
TOP_LEVEL_KEYS = frozenset(
    {
        "client_id",
        "user_id",
        "timestamp_micros",
        "user_properties",
        "consent",
        "non_personalized_ads",
        "events",
        "user_data",
        "user_location",
        "device",
        "ip_override",
        "validation_behavior",
    }
)
RESERVED_EVENT_NAMES = frozenset(
    {
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "ad_reward",
        "adunit_exposure",
        "app_background",
        "app_clear_data",
        "app_exception",
        "app_install",
        "app_remove",
        "app_store_refund",
        "app_update",
        "app_upgrade",
        "dynamic_link_app_open",
        "dynamic_link_app_update",
        "dynamic_link_first_open",
        "error",
        "firebase_campaign",
        "firebase_in_app_message_action",
        "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "notification_send",
        "os_update",
        "screen_view",
        "session_start",
        "user_engagement",
    }
)
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
HASHED_USER_DATA_KEYS = ("sha256_email_address", "sha256_phone_number")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class _Problems:
    """Collects validation messages in GA4's shape."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    def add(self, path: str, description: str, code: str = "VALUE_INVALID") -> None:
        self.messages.append({"fieldPath": path, "description": description, "validationCode": code})


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _check_name(name: Any, path: str, problems: _Problems, *, reserved: frozenset[str] = frozenset()) -> None:
    if not isinstance(name, str) or not name:
        problems.add(path, "name is required and must be a string", "VALUE_REQUIRED")
    elif len(name) > MAX_NAME_CHARS:
        problems.add(path, f"name '{name}' is longer than {MAX_NAME_CHARS} characters", "VALUE_OUT_OF_BOUNDS")
    elif not _NAME.match(name):
        problems.add(
            path, f"name '{name}' must start with a letter and hold only letters, digits, '_'", "NAME_INVALID"
        )
    elif name in reserved or name.startswith(RESERVED_PREFIXES):
        problems.add(path, f"name '{name}' is reserved", "NAME_RESERVED")


def _check_value(value: Any, path: str, problems: _Problems) -> None:
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            problems.add(path, f"value is longer than {MAX_VALUE_CHARS} characters", "VALUE_OUT_OF_BOUNDS")
    elif not is_number(value):
        problems.add(path, "value must be a string or a number")


def _check_params(params: Any, path: str, problems: _Problems) -> None:
    if not isinstance(params, dict):
        problems.add(path, "params must be an object")
        return
    if len(params) > MAX_PARAMS:
        problems.add(path, f"more than {MAX_PARAMS} params", "EXCEED_MAX_ENTITIES")
    for name, value in params.items():
        _check_name(name, f"{path}.{name}", problems, reserved=frozenset({"firebase_conversion"}))
        if name != "items":
            _check_value(value, f"{path}.{name}", problems)
            continue
        if not isinstance(value, list):
            problems.add(f"{path}.items", "items must be a list")
            continue
        if len(value) > MAX_ITEMS:
            problems.add(f"{path}.items", f"more than {MAX_ITEMS} items", "EXCEED_MAX_ENTITIES")
        for i, item in enumerate(value):
            item_path = f"{path}.items[{i}]"
            if not isinstance(item, dict):
                problems.add(item_path, "an item must be an object")
                continue
            if "item_id" not in item and "item_name" not in item:
                problems.add(item_path, "an item needs item_id or item_name", "VALUE_REQUIRED")
            for key, item_value in item.items():
                _check_name(key, f"{item_path}.{key}", problems)
                _check_value(item_value, f"{item_path}.{key}", problems)


class SgtmFake:
    """State and ASGI app of the sGTM / GA4 Measurement Protocol fake."""

    def __init__(
        self, measurement_id: str | None, api_secret: str | None, clock: Callable[[], float]
    ) -> None:
        self.measurement_id = measurement_id
        self.api_secret = api_secret
        self.clock = clock
        self._lock = threading.Lock()
        self._accepted: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._collect, methods=["POST"])])

    def reset(self) -> None:
        """Forget accepted payloads."""
        with self._lock:
            self._accepted.clear()

    def state(self) -> dict[str, Any]:
        """Return the accepted payloads and their events as JSON-ready data."""
        with self._lock:
            accepted = list(self._accepted)
        events = [{"client_id": p["client_id"], **e} for p in accepted for e in p["events"]]
        return {"accepted": accepted, "events": events}

    def keep_out(self, body: Any) -> Callable[[], None]:
        """For a silent loss: what forgets the payload `body` once the fake has accepted it."""

        def undo() -> None:
            with self._lock:
                for position in range(len(self._accepted) - 1, -1, -1):
                    if self._accepted[position] == body:
                        del self._accepted[position]
                        break

        return undo

    async def _collect(self, request: Request) -> Response:
        if not request.url.path.endswith("/collect"):
            return JSONResponse({"error": "not found"}, status_code=404)
        problems = _Problems()
        for name, expected in (("measurement_id", self.measurement_id), ("api_secret", self.api_secret)):
            given = request.query_params.get(name, "")
            if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
                problems.add(name, f"{name} is missing or wrong", "VALUE_INVALID")
        if problems.messages:
            return JSONResponse({"validationMessages": problems.messages}, status_code=403)

        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            problems.add("", f"the body is larger than {MAX_BODY_BYTES} bytes", "VALUE_OUT_OF_BOUNDS")
            return JSONResponse({"validationMessages": problems.messages}, status_code=400)
        body = parse_json_object(raw)
        if body is None:
            problems.add("", "the body must be a JSON object")
            return JSONResponse({"validationMessages": problems.messages}, status_code=400)

        self._check_payload(body, problems)
        if problems.messages:
            return JSONResponse({"validationMessages": problems.messages}, status_code=400)
        with self._lock:
            self._accepted.append(body)
        return Response(status_code=204)

    def _check_payload(self, body: dict[str, Any], problems: _Problems) -> None:
        for key in body:
            if key not in TOP_LEVEL_KEYS:
                problems.add(key, f"unknown field '{key}'")
        client_id = body.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            problems.add(
                "client_id", "client_id is required and must be a non-empty string", "VALUE_REQUIRED"
            )
        if body.get("user_id") is not None and (
            not isinstance(body["user_id"], str) or len(body["user_id"]) > 256
        ):
            problems.add("user_id", "user_id must be a string of at most 256 characters")
        if "timestamp_micros" in body:
            self._check_timestamp(body["timestamp_micros"], "timestamp_micros", problems)

        events = body.get("events")
        if not isinstance(events, list) or not events:
            problems.add("events", "events must be a list of at least one event", "VALUE_REQUIRED")
        else:
            if len(events) > MAX_EVENTS:
                problems.add("events", f"more than {MAX_EVENTS} events", "EXCEED_MAX_ENTITIES")
            for i, event in enumerate(events):
                path = f"events[{i}]"
                if not isinstance(event, dict):
                    problems.add(path, "an event must be an object")
                    continue
                _check_name(event.get("name"), f"{path}.name", problems, reserved=RESERVED_EVENT_NAMES)
                if "params" in event:
                    _check_params(event["params"], f"{path}.params", problems)
                if "timestamp_micros" in event:
                    self._check_timestamp(event["timestamp_micros"], f"{path}.timestamp_micros", problems)

        if "user_data" in body:
            _check_user_data(body["user_data"], problems)
        if "consent" in body:
            _check_consent(body["consent"], problems)
        for path, text in _strings({k: v for k, v in body.items() if k != "user_data"}, "$"):
            if _EMAIL_LIKE.search(text):
                problems.add(
                    path[2:], "looks like a raw email address; send only SHA-256 hashes", "VALUE_INVALID"
                )

    def _check_timestamp(self, value: Any, path: str, problems: _Problems) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            problems.add(path, "timestamp_micros must be an integer")
            return
        age_seconds = self.clock() - value / 1_000_000
        if age_seconds > MAX_BACKDATE_SECONDS:
            problems.add(path, "timestamp_micros is more than 72 hours in the past", "VALUE_OUT_OF_BOUNDS")
        elif age_seconds < -MAX_FUTURE_SKEW_SECONDS:
            problems.add(path, "timestamp_micros is in the future", "VALUE_OUT_OF_BOUNDS")


def _check_user_data(user_data: Any, problems: _Problems) -> None:
    if not isinstance(user_data, dict):
        problems.add("user_data", "user_data must be an object")
        return
    for path, text in _strings(user_data, "user_data"):
        if "@" in text or text.lstrip().startswith("+"):
            problems.add(path, "raw email or phone in user_data; send only SHA-256 hashes", "VALUE_INVALID")
    for key in HASHED_USER_DATA_KEYS:
        if key not in user_data:
            continue
        values = user_data[key]
        if not isinstance(values, list) or not 1 <= len(values) <= 3:
            problems.add(f"user_data.{key}", "must be a list of 1 to 3 SHA-256 hex digests")
            continue
        for i, value in enumerate(values):
            if not isinstance(value, str) or not _SHA256_HEX.match(value):
                problems.add(f"user_data.{key}[{i}]", "must be 64 lower-case hex characters (SHA-256)")


def _check_consent(consent: Any, problems: _Problems) -> None:
    if not isinstance(consent, dict):
        problems.add("consent", "consent must be an object")
        return
    for key, value in consent.items():
        if key not in ("ad_user_data", "ad_personalization"):
            problems.add(f"consent.{key}", f"unknown consent field '{key}'")
        elif value not in CONSENT_VALUES:
            problems.add(f"consent.{key}", "must be GRANTED or DENIED")
