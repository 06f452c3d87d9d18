"""The outbox: the delivery rows a recorded fact causes, gated by consent and configuration."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ingest.core.settings import Settings
from ingest.core.vocabulary import PURPOSE_OF, DeliveryKind, DeliveryStatus, Destination, Purpose
from ingest.outbox.gate import ConsentState, consent_gate


@dataclass(frozen=True)
class Delivery:
    """A delivery row about to be inserted."""

    delivery_id: UUID
    event_id: UUID | None
    user_session_id: UUID | None
    destination: Destination
    kind: DeliveryKind
    purpose: Purpose
    idempotency_key: str
    payload: str
    status: DeliveryStatus
    reason: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def as_row(self) -> dict[str, Any]:
        """The column → value mapping the store inserts."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def plan_delivery(
    settings: Settings,
    *,
    destination: Destination,
    kind: DeliveryKind,
    event_id: UUID | None,
    user_session_id: UUID | None,
    consent: ConsentState,
    now: datetime,
    payload: dict[str, Any] | None = None,
    key_suffix: str | None = None,
) -> Delivery:
    """One delivery: pending, or suppressed for lack of consent, or disabled when the destination is off."""
    purpose = PURPOSE_OF[destination]
    reason = consent_gate(purpose, consent, require_consent=settings.require_consent)
    if reason is not None:
        status = DeliveryStatus.SUPPRESSED
    elif not settings.destinations_enabled()[destination.value]:
        status, reason = DeliveryStatus.DISABLED, f"{destination.value} is not configured"
    else:
        status = DeliveryStatus.PENDING
    key = f"{event_id}:{destination.value}:{kind}" + (f":{key_suffix}" if key_suffix else "")
    return Delivery(
        delivery_id=uuid.uuid4(),
        event_id=event_id,
        user_session_id=user_session_id,
        destination=destination,
        kind=kind,
        purpose=purpose,
        idempotency_key=key,
        payload=json.dumps(payload or {}, default=str),
        status=status,
        reason=reason,
        next_attempt_at=now if status is DeliveryStatus.PENDING else None,
        created_at=now,
        updated_at=now,
    )
