"""One delivery attempt, apart from the loop that schedules it: gate, render, send, classify, settle."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import orjson

from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryStatus, Destination, Purpose
from ingest.outbox.destinations import DestinationClient
from ingest.outbox.destinations.rendering import CannotRender
from ingest.outbox.destinations.transport import AnswerFault, HttpAnswer, TransportError
from ingest.outbox.gate import ConsentState, consent_gate
from ingest.outbox.records import ClaimedDelivery, RecordedOutcome

RESPONSE_BODY_LIMIT = 2048  # bytes of a response kept on the attempt row
MAX_RETRY_AFTER_SECONDS = 3600.0
# 4xx answers that mean "not now" rather than "never": worth a retry.
RETRYABLE_4XX = frozenset({408, 409, 425})
# The attempt outcome of a circuit-breaker probe that failed (the other outcomes are a verdict or a status).
PROBE_FAILED = "probe_failed"


class Verdict(StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"
    RETRY = "retry"  # a failure worth retrying: 5xx, 408/409/425, timeout, connection error
    RATE_LIMITED = "rate_limited"  # 429: wait for Retry-After; not a failure, no retry spent
    PERMANENT = "permanent"  # any other 4xx, or a delivery that cannot be rendered
    SUPPRESSED = "suppressed"  # consent no longer allows it: nothing sent
    DISABLED = "disabled"  # the destination is not configured: nothing sent


@dataclass(frozen=True)
class AttemptResult:
    """The facts of one attempt (or of the decision not to make one)."""

    verdict: Verdict
    started_at: datetime
    duration_ms: float | None = None
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after: float | None = None
    learned_id: str | None = None
    # The destination looked down (5xx, timeout, connection error): counts towards opening the breaker.
    outage: bool = False

    @property
    def attempted(self) -> bool:
        """Whether a request was made (or tried to be made)."""
        return self.verdict not in (Verdict.SUPPRESSED, Verdict.DISABLED)


def consent_in_force(claimed: ClaimedDelivery) -> ConsentState:
    """The latest consent for the journey: the ledger's newest row, else the lead's columns, else none."""
    if claimed.consent_marketing is not None and claimed.consent_analytics is not None:
        return ConsentState(marketing=claimed.consent_marketing, analytics=claimed.consent_analytics)
    lead = claimed.lead or {}
    return ConsentState(
        marketing=bool(lead.get("marketing_consent")), analytics=bool(lead.get("analytics_consent"))
    )


def send_time_gate(claimed: ClaimedDelivery, settings: Settings) -> str | None:
    """Why this delivery may not be sent now (consent), or None."""
    return consent_gate(
        Purpose(claimed.purpose), consent_in_force(claimed), require_consent=settings.require_consent
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now.replace(tzinfo=UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _body_text(raw: bytes) -> str:
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="replace")


def classify(
    answer: HttpAnswer,
    *,
    started_at: datetime,
    duration_ms: float,
    learned: Any,
    fault: AnswerFault | None = None,
) -> AttemptResult:
    """Turn an HTTP answer into a verdict; `fault` is what the destination read in its body (see AnswerFault)."""
    code = answer.status
    body = _body_text(answer.body)
    common: dict[str, Any] = {
        "started_at": started_at,
        "duration_ms": duration_ms,
        "status_code": code,
        "response_body": body,
    }
    if fault is not None:
        return AttemptResult(
            Verdict.RETRY if fault.retryable else Verdict.PERMANENT, error=fault.error, **common
        )
    if 200 <= code < 300:
        return AttemptResult(Verdict.DELIVERED, learned_id=learned, **common)
    error = f"HTTP {code}: {body[:300]}".rstrip(": ")
    if code == 429:
        retry_after = parse_retry_after(answer.headers.get("retry-after"), started_at)
        return AttemptResult(Verdict.RATE_LIMITED, error=error, retry_after=retry_after, **common)
    if code >= 500:
        return AttemptResult(Verdict.RETRY, error=error, outage=True, **common)
    if code in RETRYABLE_4XX:
        return AttemptResult(Verdict.RETRY, error=error, **common)
    return AttemptResult(Verdict.PERMANENT, error=error, **common)


def _answer_json(answer: HttpAnswer) -> Any:
    if not answer.body:
        return None
    try:
        return orjson.loads(answer.body)
    except ValueError:  # orjson.JSONDecodeError is one
        return None


async def deliver_one(
    client: DestinationClient | None, claimed: ClaimedDelivery, *, settings: Settings, now: datetime
) -> AttemptResult:
    """Gate on the consent in force, render from the current lead row, send once and classify the answer."""
    reason = send_time_gate(claimed, settings)
    if reason is not None:
        return AttemptResult(Verdict.SUPPRESSED, started_at=now, error=reason)
    if client is None:
        return AttemptResult(
            Verdict.DISABLED, started_at=now, error=f"{claimed.destination} is not configured"
        )
    try:
        request = client.render(claimed, now)
    except CannotRender as exc:
        return AttemptResult(Verdict.PERMANENT, started_at=now, error=f"cannot render: {exc}")
    began = time.perf_counter()
    try:
        answer = await client.send(request)
    except (TransportError, TimeoutError) as exc:  # timeouts, refused and reset connections
        duration_ms = (time.perf_counter() - began) * 1000
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return AttemptResult(Verdict.RETRY, started_at=now, duration_ms=duration_ms, error=error, outage=True)
    duration_ms = (time.perf_counter() - began) * 1000
    parsed = _answer_json(answer)
    learned = client.learned_id(parsed) if answer.is_success else None
    fault = client.answer_fault(answer, parsed)
    return classify(answer, started_at=now, duration_ms=duration_ms, learned=learned, fault=fault)


def backoff_seconds(failures: int, *, base: float, multiplier: float, rng: random.Random) -> float:
    """base x multiplier^(failures-1), plus up to a quarter more as jitter so retries don't arrive in step."""
    delay = base * multiplier ** max(failures - 1, 0)
    return delay * (1 + 0.25 * rng.random())


def settle(
    claimed: ClaimedDelivery,
    result: AttemptResult,
    *,
    settings: Settings,
    now: datetime,
    rng: random.Random,
    probe: bool = False,
) -> RecordedOutcome:
    """The delivery's next state after `result`: delivered, retrying (when), dead, suppressed or disabled.

    A failed circuit-breaker probe and a 429 do not spend the retry budget: the first tests whether the
    destination is back, the second is the destination pacing us.
    """
    status, reason, next_at, spent, outcome = DeliveryStatus.RETRYING, None, None, 0, result.verdict.value
    delivered_at = None
    if result.verdict is Verdict.DELIVERED:
        status, delivered_at, outcome = DeliveryStatus.DELIVERED, now, DeliveryStatus.DELIVERED
    elif result.verdict is Verdict.SUPPRESSED:
        status, reason, outcome = DeliveryStatus.SUPPRESSED, result.error, DeliveryStatus.SUPPRESSED
    elif result.verdict is Verdict.DISABLED:
        status, reason, outcome = DeliveryStatus.DISABLED, result.error, DeliveryStatus.DISABLED
    elif result.verdict is Verdict.PERMANENT:
        status, reason, spent, outcome = DeliveryStatus.DEAD, result.error, 1, DeliveryStatus.DEAD
    elif result.verdict is Verdict.RATE_LIMITED:
        wait = result.retry_after
        if wait is None:
            wait = backoff_seconds(
                claimed.failure_count + 1,
                base=settings.dlq_backoff_base_seconds,
                multiplier=settings.dlq_backoff_multiplier,
                rng=rng,
            )
        next_at = now + timedelta(seconds=wait)
    elif probe:
        next_at, outcome = now, PROBE_FAILED
    else:
        failures = claimed.failure_count + 1
        spent = 1
        if failures > settings.dlq_max_retries:
            status, reason, outcome = (
                DeliveryStatus.DEAD,
                f"retries used up ({failures} failures); last: {result.error}",
                DeliveryStatus.DEAD,
            )
        else:
            wait = backoff_seconds(
                failures,
                base=settings.dlq_backoff_base_seconds,
                multiplier=settings.dlq_backoff_multiplier,
                rng=rng,
            )
            next_at, outcome = now + timedelta(seconds=wait), DeliveryStatus.RETRYING
    learned = result.learned_id if result.verdict is Verdict.DELIVERED else None
    known = claimed.lead or {}
    if learned is not None and learned in (
        known.get("mailerlite_subscriber_id"),
        known.get("crm_contact_id"),
    ):
        learned = None  # already on the lead: nothing to write
    return RecordedOutcome(
        delivery_id=claimed.delivery_id,
        event_id=claimed.event_id,
        attempted=result.attempted,
        attempt_number=claimed.attempt_count + 1,
        started_at=result.started_at,
        duration_ms=result.duration_ms,
        status_code=result.status_code,
        response_body=result.response_body,
        error=result.error,
        outcome=outcome,
        status=status,
        reason=reason,
        next_attempt_at=next_at,
        spent=spent,
        delivered_at=delivered_at,
        subscriber_id=learned if claimed.destination == Destination.MAILERLITE.value else None,
        contact_id=learned if claimed.destination == Destination.CRM.value else None,
        claim_token=claimed.claim_token,
    )
