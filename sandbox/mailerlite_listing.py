"""The MailerLite fake's `GET /api/subscribers`: what it keeps, listed back in cursor pages as the real API does."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

LIST_DEFAULT_LIMIT = 25
LIST_MAX_LIMIT = 1000
LISTED_STATUSES = ("active", "unsubscribed", "unconfirmed", "bounced", "junk")


def _refused(field: str, message: str) -> Response:
    return JSONResponse({"message": message, "errors": {field: [message]}}, status_code=422)


def _cursor(subscriber_id: str) -> str:
    text = json.dumps({"id": subscriber_id, "_pointsToNextItems": True})
    return base64.urlsafe_b64encode(text.encode()).decode()


def _after(cursor: str) -> str | None:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error):
        return None
    return str(decoded["id"]) if isinstance(decoded, dict) and "id" in decoded else None


def list_subscribers(api_key: str, subscribers: Iterable[dict[str, Any]], request: Request) -> Response:
    """One page of subscribers in id order.

    Query: `limit` (default 25, at most 1000; `0` answers only `{"total": N}`), `cursor` (the previous page's
    `meta.next_cursor`), `filter[status]`. Answer: `{data, links: {first, last, prev, next}, meta: {path, per_page,
    next_cursor, prev_cursor}}`; the last page has `next_cursor` null.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
        return JSONResponse({"message": "Unauthenticated."}, status_code=401)
    raw_limit = request.query_params.get("limit", str(LIST_DEFAULT_LIMIT))
    status = request.query_params.get("filter[status]")
    if not raw_limit.isdigit() or int(raw_limit) > LIST_MAX_LIMIT:
        return _refused("limit", f"The limit must be an integer between 0 and {LIST_MAX_LIMIT}.")
    if status is not None and status not in LISTED_STATUSES:
        return _refused("filter.status", "The selected filter.status is invalid.")
    listed = sorted(
        (sub for sub in subscribers if status is None or sub["status"] == status), key=lambda s: s["id"]
    )
    limit = int(raw_limit)
    if limit == 0:
        return JSONResponse({"total": len(listed)})
    cursor = request.query_params.get("cursor")
    if cursor:
        after = _after(cursor)
        if after is None:
            return _refused("cursor", "The cursor is invalid.")
        listed = [sub for sub in listed if sub["id"] > after]
    page, more = listed[:limit], len(listed) > limit
    next_cursor = _cursor(page[-1]["id"]) if more and page else None
    path = str(request.url.replace(query=""))
    links = {
        "first": None,
        "last": None,
        "prev": None,
        "next": f"{path}?cursor={next_cursor}" if next_cursor else None,
    }
    meta = {"path": path, "per_page": limit, "next_cursor": next_cursor, "prev_cursor": None}
    return JSONResponse({"data": page, "links": links, "meta": meta})
