"""A loopback fake of the generic CRM webhook (CONTRACT.md "Outbound wire formats").

Accepts `POST` on any path. Checks, in order: `Authorization: Bearer <token>` when configured with a token (401),
`X-Attribution-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` when configured with a signing
secret (401 when missing, malformed, wrong, or `t` further than the tolerance from now; several `v1=` entries
are allowed for key rotation), `Idempotency-Key` (400 when missing), a JSON object body (400) and its fields
(422 `{"error": "validation_failed", "fields": {"<name>": "<why>"}}`).

A successful answer is 200 `{"contact_id": "<stable id per email>", "status": "created" | "updated"}`. A repeat
of an Idempotency-Key that already succeeded gets the stored answer again with `Idempotent-Replayed: true`
(as Stripe does) and counts as a duplicate, not a write; failed attempts are not stored, so a retry with the same
key after a 4xx or an injected fault is a first write.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.validation import (
    is_number,
    is_valid_email,
    normalise_email,
    parse_json_object,
    stable_token,
    undo_of_write,
)

LEAD_STATUSES = ("lead", "paid", "refunded")
SIGNATURE_HEADER = "x-attribution-signature"
_OPTIONAL_STRINGS = ("name", "phone", "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")


def sign_crm_body(secret: str, body: bytes, timestamp: int) -> str:
    """Return the X-Attribution-Signature value for a body sent at timestamp."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _signature_valid(header: str, secret: str, body: bytes, now: float, tolerance: float) -> bool:
    parts = [p.strip().partition("=") for p in header.split(",")]
    timestamps = [v for k, _, v in parts if k == "t"]
    signatures = [v for k, _, v in parts if k == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign_crm_body(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, s) for s in signatures)


def _check_lead(body: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not isinstance(body.get("event_id"), str) or not body["event_id"].strip():
        errors["event_id"] = "required, a non-empty string"
    if not is_valid_email(body.get("email")):
        errors["email"] = "required, a valid email address"
    if body.get("lead_status") not in LEAD_STATUSES:
        errors["lead_status"] = "required, one of " + "|".join(LEAD_STATUSES)
    for key in _OPTIONAL_STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            errors[key] = "must be a string or null"
    if body.get("amount") is not None and not is_number(body["amount"]):
        errors["amount"] = "must be a number or null"
    if body.get("lead_created_at") is not None and not _is_iso_datetime(body["lead_created_at"]):
        errors["lead_created_at"] = "must be an ISO-8601 date-time or null"
    return errors


def _is_iso_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


class CrmFake:
    """State and ASGI app of the CRM webhook fake."""

    def __init__(
        self,
        api_token: str | None,
        signing_secret: str | None,
        clock: Callable[[], float],
        signature_tolerance_seconds: float = 300.0,
    ) -> None:
        self.api_token = api_token
        self.signing_secret = signing_secret
        self.clock = clock
        self.signature_tolerance_seconds = signature_tolerance_seconds
        self._lock = threading.Lock()
        self._contacts: dict[str, dict[str, Any]] = {}
        self._answers: dict[str, dict[str, Any]] = {}
        self._received = 0
        self._duplicates = 0
        self.app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])

    def reset(self) -> None:
        """Forget contacts, stored idempotent answers and counters."""
        with self._lock:
            self._contacts.clear()
            self._answers.clear()
            self._received = 0
            self._duplicates = 0

    def state(self) -> dict[str, Any]:
        """Return counters (received: requests that reached the CRM, faults excluded) and contacts."""
        with self._lock:
            return {
                "received": self._received,
                "unique": len(self._answers),
                "duplicates": self._duplicates,
                "contacts": {email: dict(c) for email, c in self._contacts.items()},
            }

    async def _receive(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            self._received += 1
        if self.api_token is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_token.encode()):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
        if self.signing_secret is not None:
            header = request.headers.get(SIGNATURE_HEADER, "")
            if not _signature_valid(
                header, self.signing_secret, raw, self.clock(), self.signature_tolerance_seconds
            ):
                return JSONResponse({"error": "invalid_signature"}, status_code=401)
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return JSONResponse({"error": "missing_idempotency_key"}, status_code=400)

        with self._lock:
            stored = self._answers.get(key)
            if stored is not None:
                self._duplicates += 1
                return JSONResponse(stored, headers={"idempotent-replayed": "true"})

        body = parse_json_object(raw)
        if body is None:
            return JSONResponse({"error": "invalid_json"}, status_code=400)
        errors = _check_lead(body)
        if errors:
            return JSONResponse({"error": "validation_failed", "fields": errors}, status_code=422)

        email = normalise_email(body["email"])
        with self._lock:
            # A concurrent request with the same key may have won while we validated.
            stored = self._answers.get(key)
            if stored is not None:
                self._duplicates += 1
                return JSONResponse(stored, headers={"idempotent-replayed": "true"})
            contact = self._contacts.get(email)
            answer = {
                "contact_id": stable_token("ct_", email),
                "status": "created" if contact is None else "updated",
            }
            self._contacts[email] = {
                **(contact or {"contact_id": answer["contact_id"], "email": email, "event_ids": []}),
                **{k: v for k, v in body.items() if k not in ("email", "event_id")},
                "event_ids": [*(contact or {}).get("event_ids", []), body["event_id"]],
            }
            self._answers[key] = answer
        return JSONResponse(answer)

    def keep_out(self, body: Any) -> Callable[[], None]:
        """For a silent loss: what undoes the contact write `body` is about to make (the stored answer stays)."""
        return undo_of_write(self._lock, self._contacts, body)
