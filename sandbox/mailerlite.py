"""A loopback fake of the MailerLite "connect" API (subscribers upsert and custom fields).

Checked like the real API: `Authorization: Bearer <key>` (401 `{"message": "Unauthenticated."}`), a valid
`email`, `fields` values that are strings, numbers or null, `groups` that exist, `status` in
active|unsubscribed|unconfirmed|bounced|junk, `opted_in_at` / `subscribed_at` / `unsubscribed_at` as
"YYYY-MM-DD HH:MM:SS" and `optin_ip` / `ip_address` as IP addresses. Errors are 422 in MailerLite's (Laravel's)
shape: `{"message": "<first error> (and N more errors)", "errors": {"<field>": ["..."]}}`.

Like the real API, `fields` keys that were never created with `POST /api/fields` are silently dropped (the
request still answers 200/201): a new account has only MailerLite's default fields, so the sender must create its
custom fields first (`attribution mailerlite setup-fields`, or the delivery worker at start-up). What was sent is
still visible in the recorded requests. Deliberate difference: it accepts unknown top-level keys.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.mailerlite_listing import list_subscribers
from sandbox.validation import (
    is_number,
    is_valid_email,
    normalise_email,
    parse_json_object,
    stable_digits,
    undo_of_write,
)

SUBSCRIBER_STATUSES = ("active", "unsubscribed", "unconfirmed", "bounced", "junk")
FIELD_TYPES = ("text", "number", "date")
DEFAULT_FIELDS = (
    ("Name", "name", "text"),
    ("Last name", "last_name", "text"),
    ("Company", "company", "text"),
    ("Country", "country", "text"),
    ("City", "city", "text"),
    ("Phone", "phone", "text"),
    ("State", "state", "text"),
    ("ZIP", "z_i_p", "text"),
)
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_DATE_KEYS = ("opted_in_at", "subscribed_at", "unsubscribed_at")
_IP_KEYS = ("optin_ip", "ip_address")


def _laravel_error(errors: dict[str, list[str]]) -> Response:
    first = next(iter(errors.values()))[0]
    extra = sum(len(v) for v in errors.values()) - 1
    message = first if extra == 0 else f"{first} (and {extra} more error{'s' if extra > 1 else ''})"
    return JSONResponse({"message": message, "errors": errors}, status_code=422)


def _field_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _valid_date(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.strptime(value, DATE_FORMAT)
    except ValueError:
        return False
    return True


def _valid_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class MailerLiteFake:
    """State and ASGI app of the MailerLite fake."""

    def __init__(self, api_key: str, group_ids: Iterable[str], clock: Callable[[], float]) -> None:
        self.api_key = api_key
        self.group_ids = frozenset(group_ids)
        self.clock = clock
        self._lock = threading.Lock()
        self._subscribers: dict[str, dict[str, Any]] = {}
        self._fields: dict[str, dict[str, str]] = {}
        self._next_field_id = 0
        self.reset()
        self.app = Starlette(
            routes=[
                Route("/api/subscribers", self._upsert_subscriber, methods=["POST"]),
                Route("/api/subscribers", self._list_subscribers, methods=["GET"]),
                Route("/api/subscribers/{subscriber}", self._get_subscriber, methods=["GET"]),
                Route("/api/fields", self._create_field, methods=["POST"]),
                Route("/api/fields", self._list_fields, methods=["GET"]),
            ]
        )

    def reset(self) -> None:
        """Forget every subscriber and custom field."""
        with self._lock:
            self._subscribers.clear()
            self._fields.clear()
            self._next_field_id = 1000
            for name, key, kind in DEFAULT_FIELDS:
                self._add_field(name, key, kind)

    def state(self) -> dict[str, Any]:
        """Return subscribers (by email) and fields as JSON-ready data."""
        with self._lock:
            return {
                "subscribers": {email: dict(sub) for email, sub in self._subscribers.items()},
                "fields": list(self._fields.values()),
            }

    def subscriber(self, email: str) -> dict[str, Any] | None:
        """Return the stored subscriber for an address, if any."""
        with self._lock:
            found = self._subscribers.get(normalise_email(email))
            return None if found is None else dict(found)

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime(DATE_FORMAT)

    def _add_field(self, name: str, key: str, kind: str) -> dict[str, str]:
        self._next_field_id += 1
        field = {"id": str(self._next_field_id), "name": name, "key": key, "type": kind}
        self._fields[key] = field
        return field

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.api_key.encode())

    async def _upsert_subscriber(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"message": "Unauthenticated."}, status_code=401)
        body = parse_json_object(await request.body()) or {}
        errors = self._check_subscriber(body)
        if errors:
            return _laravel_error(errors)

        email = normalise_email(body["email"])
        now = self._now()
        with self._lock:
            existing = self._subscribers.get(email)
            created = existing is None
            sub: dict[str, Any] = existing or {
                "id": stable_digits(email),
                "email": email,
                "status": "active",
                "fields": {key: None for key in self._fields},
                "groups": [],
                "created_at": now,
                "subscribed_at": now,
                "unsubscribed_at": None,
                "opted_in_at": None,
                "optin_ip": None,
                "ip_address": None,
            }
            known = {key: value for key, value in body.get("fields", {}).items() if key in self._fields}
            sub["fields"] = {**sub["fields"], **known}
            for group_id in body.get("groups", []):
                if group_id not in {g["id"] for g in sub["groups"]}:
                    sub["groups"] = [*sub["groups"], {"id": group_id}]
            for key in (*_DATE_KEYS, *_IP_KEYS):
                if key in body:
                    sub[key] = body[key]
            status = body.get("status")
            if status is not None and status != sub["status"]:
                sub["status"] = status
                if status == "unsubscribed" and "unsubscribed_at" not in body:
                    sub["unsubscribed_at"] = now
            sub["updated_at"] = now
            self._subscribers[email] = sub
            data = dict(sub)
        return JSONResponse({"data": data}, status_code=201 if created else 200)

    def _check_subscriber(self, body: dict[str, Any]) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        email = body.get("email")
        if email is None or email == "":
            errors["email"] = ["The email field is required."]
        elif not is_valid_email(email):
            errors["email"] = ["The email must be a valid email address."]

        fields = body.get("fields", {})
        if not isinstance(fields, dict):
            errors["fields"] = ["The fields must be an array."]
        else:
            for key, value in fields.items():
                if not (value is None or isinstance(value, str) or is_number(value)):
                    errors[f"fields.{key}"] = [f"The fields.{key} must be a string, a number or null."]

        groups = body.get("groups", [])
        if not isinstance(groups, list):
            errors["groups"] = ["The groups must be an array."]
        else:
            for i, group_id in enumerate(groups):
                if not isinstance(group_id, str) or group_id not in self.group_ids:
                    errors[f"groups.{i}"] = [f"The selected groups.{i} is invalid."]

        status = body.get("status")
        if status is not None and status not in SUBSCRIBER_STATUSES:
            errors["status"] = ["The selected status is invalid."]
        for key in _DATE_KEYS:
            if body.get(key) is not None and not _valid_date(body[key]):
                errors[key] = [f"The {key} does not match the format Y-m-d H:i:s."]
        for key in _IP_KEYS:
            if body.get(key) is not None and not _valid_ip(body[key]):
                errors[key] = [f"The {key} must be a valid IP address."]
        return errors

    async def _get_subscriber(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"message": "Unauthenticated."}, status_code=401)
        wanted = request.path_params["subscriber"]
        with self._lock:
            for sub in self._subscribers.values():
                if wanted in (sub["id"], sub["email"]) or normalise_email(wanted) == sub["email"]:
                    return JSONResponse({"data": dict(sub)})
        return JSONResponse({"message": "Resource not found."}, status_code=404)

    async def _create_field(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"message": "Unauthenticated."}, status_code=401)
        body = parse_json_object(await request.body()) or {}
        name, kind = body.get("name"), body.get("type")
        errors: dict[str, list[str]] = {}
        if not isinstance(name, str) or not name.strip():
            errors["name"] = ["The name field is required."]
        elif len(name) > 255:
            errors["name"] = ["The name must not be greater than 255 characters."]
        if kind not in FIELD_TYPES:
            errors["type"] = ["The selected type is invalid."]
        with self._lock:
            if isinstance(name, str) and "name" not in errors:
                taken = {f["name"].lower() for f in self._fields.values()} | set(self._fields)
                if name.strip().lower() in taken or _field_key(name) in self._fields:
                    errors["name"] = ["The name has already been taken."]
            if errors or not isinstance(name, str) or not isinstance(kind, str):
                return _laravel_error(errors)
            field = self._add_field(name.strip(), _field_key(name), kind)
            for sub in self._subscribers.values():
                sub["fields"] = {**sub["fields"], field["key"]: None}
        return JSONResponse({"data": dict(field)}, status_code=201)

    async def _list_fields(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"message": "Unauthenticated."}, status_code=401)
        with self._lock:
            data = [dict(f) for f in self._fields.values()]
        return JSONResponse({"data": data, "meta": {"total": len(data)}})

    async def _list_subscribers(self, request: Request) -> Response:
        with self._lock:
            subscribers = list(self._subscribers.values())
        return list_subscribers(self.api_key, subscribers, request)

    def keep_out(self, body: Any) -> Callable[[], None]:
        """For a silent loss: what undoes the upsert `body` is about to make (the harness calls it once answered)."""
        return undo_of_write(self._lock, self._subscribers, body)
