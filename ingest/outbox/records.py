"""What the worker holds and hands back: a claimed delivery with its lead and consent, the outcome of its send,
and a lease given back unsent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ingest.core.vocabulary import DeliveryStatus


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery the worker holds a lease on, with the lead and the consent in force when it was claimed."""

    delivery_id: UUID
    event_id: UUID | None
    user_session_id: UUID | None
    destination: str
    kind: str
    purpose: str
    idempotency_key: str
    payload: dict[str, Any]
    attempt_count: int
    failure_count: int
    created_at: datetime
    lead: dict[str, Any] | None
    consent_marketing: bool | None  # latest consent ledger row for the event_id or session; None: none
    consent_analytics: bool | None
    claim_token: UUID | None = None  # the lease's token: its outcome is recorded only while it still holds
    send_in: float | None = None  # seconds after the claim when its request slot starts (a shared rate limit)


@dataclass(frozen=True)
class RecordedOutcome:
    """What one send (or decision not to send) does to its delivery row, attempt log and lead."""

    delivery_id: UUID
    event_id: UUID | None
    attempted: bool  # False: no request was made (suppressed, disabled), so no attempt row
    attempt_number: int
    started_at: datetime
    duration_ms: float | None
    status_code: int | None
    response_body: str | None
    error: str | None
    outcome: str  # the attempt's outcome: delivered | retrying | dead | rate_limited | probe_failed | ...
    status: DeliveryStatus  # the delivery's new status
    reason: str | None
    next_attempt_at: datetime | None
    spent: int  # 1 when this attempt uses up one retry of the budget
    delivered_at: datetime | None
    subscriber_id: str | None
    contact_id: str | None
    claim_token: UUID | None = None  # the lease it was sent under; refused once another claim holds the row


@dataclass(frozen=True)
class Unclaimed:
    """A lease given back without an attempt (circuit open, long pause); not due before `not_before`."""

    delivery_id: UUID
    not_before: datetime | None = None
    claim_token: UUID | None = None
