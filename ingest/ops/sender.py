"""Sending one queued alert to the webhook: a pure `post_alert` and the backoff it implies."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import httpx

from ingest.ops.repository import AlertOutcome, AlertStatus, QueuedAlert

BACKOFF_BASE_SECONDS = 1.0
_RESPONSE_EXCERPT = 200


def backoff_seconds(attempts: int, cap: float) -> float:
    """Wait after the `attempts`-th failed POST: 1, 2, 4, ... seconds, at most `cap`."""
    return min(cap, BACKOFF_BASE_SECONDS * math.pow(2, max(attempts - 1, 0)))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


async def post_alert(
    client: httpx.AsyncClient, url: str, alert: QueuedAlert, *, now: datetime, max_backoff: float
) -> AlertOutcome:
    """POST one (claimed) alert; 2xx sends it, 429 / 5xx / no answer retry it later, any other 4xx fails it for
    good. The outcome carries the claim, so it is recorded only while that claim holds."""
    claim = alert.claim_id
    attempts = alert.attempts + 1
    wait = backoff_seconds(attempts, max_backoff)
    try:
        response = await client.post(
            url, json=alert.payload, headers={"Idempotency-Key": str(alert.alert_id)}
        )
    except httpx.HTTPError as exc:
        error = type(exc).__name__  # its message may name the URL, which is a credential
        return AlertOutcome(
            alert.alert_id, AlertStatus.PENDING, error, now, now + timedelta(seconds=wait), claim
        )
    if response.is_success:
        return AlertOutcome(alert.alert_id, AlertStatus.SENT, None, now, now, claim)
    error = f"HTTP {response.status_code}: {response.text[:_RESPONSE_EXCERPT]}"
    if response.status_code == 429 or response.status_code >= 500:
        wait = max(wait, min(_retry_after(response) or 0.0, max_backoff))
        return AlertOutcome(
            alert.alert_id, AlertStatus.PENDING, error, now, now + timedelta(seconds=wait), claim
        )
    return AlertOutcome(alert.alert_id, AlertStatus.FAILED, error, now, now, claim)
