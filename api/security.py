"""Browser-facing safety: request limits, client address, per-IP rate limit and the admin token."""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from collections.abc import Mapping

from fastapi import HTTPException, Request, status
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.core.settings import Settings

# Caps on what the server reads before any route runs. A reverse proxy should hold the same or tighter limits
# (nginx: large_client_header_buffers); uvicorn's httptools parser has none of its own.
MAX_HEADER_BYTES = 16 * 1024  # request line (path and query) plus every header name and value
MAX_HEADER_COUNT = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestLimits:
    """ASGI middleware refusing, before any route runs, what no route accepts.

    431 for a request line and headers over MAX_HEADER_BYTES or with more than MAX_HEADER_COUNT headers; 415 for
    a body sent as anything but JSON (a body with no Content-Type is read as JSON); 413 for bodies over the limit,
    whether Content-Length is sent or not. Installed inside the CORS middleware, so a browser can read the answer.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, larger: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})  # path -> its own limit (an admin route taking a whole export file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) for name, value in headers)
        if len(headers) > MAX_HEADER_COUNT or size > MAX_HEADER_BYTES:
            message = f"request headers are over {MAX_HEADER_BYTES} bytes or {MAX_HEADER_COUNT} fields"
            await _refuse(send, status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", message)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        declared: int | None = None
        for name, value in headers:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"content-type" and scope["method"] in _BODY_METHODS and not _is_json(value):
                media = value.split(b";", 1)[0].strip().decode("latin-1")[:100]
                await _refuse(
                    send,
                    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    f"the body must be JSON (Content-Type: application/json), not {media}",
                )
                return
        if declared is not None and declared > limit:
            await self._too_large(send, limit)
            return
        seen = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer 413 now and tell the app the client left, so it never handles a truncated body.
                    refused = True
                    await self._too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, send: Send, limit: int) -> None:
        message = f"request body is over {limit} bytes"
        await _refuse(send, status.HTTP_413_CONTENT_TOO_LARGE, "payload_too_large", message)


async def _refuse(send: Send, code: int, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def client_ip(request: Request, settings: Settings) -> str | None:
    """The caller's address; X-Forwarded-For is believed only as far as it was added by trusted proxies."""
    peer = request.client.host if request.client else None
    if peer is None or not settings.trusted_proxy_networks:
        return peer
    forwarded = [
        part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()
    ]
    client = peer
    # Walk from the nearest hop outwards while each hop is a trusted proxy vouching for the one before it.
    for hop in reversed(forwarded):
        if not _is_trusted(client, settings):
            break
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a garbled entry: keep the last address a trusted proxy reported
        client = hop
    return client


def _is_trusted(address: str, settings: Settings) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.trusted_proxy_networks)


class RateLimiter:
    """Moving-window limit of requests per client IP and minute; 0 turns it off.

    Per process, so per instance (each `--workers` process counts its own): with N processes a client may make up
    to N times the limit. Kept so on purpose: it is abuse protection for the browser endpoints, not a quota, and a
    shared counter would cost a store round trip on the lead-capture path. A limit across instances belongs in the
    proxy in front of them (README "Deployment guide").
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(max(per_minute, 1))
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, key: str) -> None:
        """Count one request for `key`; over the limit raise 429 with Retry-After."""
        if self.per_minute <= 0 or self._limiter.hit(self._item, key):
            return
        reset_at, _ = self._limiter.get_window_stats(self._item, key)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit of {self.per_minute} requests a minute reached; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def check_admin_token(settings: Settings, authorization: str | None) -> None:
    """Refuse unless the Bearer token equals one of ATTRIBUTION_ADMIN_TOKEN's (admin is off when it is unset).

    During a roll the variable is a comma list; the token is compared with every entry in constant time, and all
    of them are compared, so the answer's timing says nothing about which entry (or how many) matched.
    """
    expected = settings.admin_tokens()
    if not expected:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="admin endpoints are off: set ATTRIBUTION_ADMIN_TOKEN"
        )
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode()
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(given, candidate.encode())
    if scheme.lower() != "bearer" or not given or not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin token missing or wrong",
            headers={"WWW-Authenticate": "Bearer"},
        )
