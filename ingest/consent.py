"""Consent policy: which delivery purposes a consent decision allows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import duckdb

from ingest import outbox_store, store
from ingest.models import ConsentFields, ConsentRecord
from ingest.settings import Settings


class Purpose(StrEnum):
    """Why a delivery is made, which decides the consent it needs."""

    MARKETING = "marketing"  # MailerLite
    ANALYTICS = "analytics"  # sGTM / GA4
    CONTACT = "contact"  # the CRM: the business's own record of a lead, not gated by marketing consent


@dataclass(frozen=True)
class ConsentState:
    """The consent in force for one journey."""

    marketing: bool
    analytics: bool


def consent_gate(purpose: Purpose, consent: ConsentState, *, require_consent: bool) -> str | None:
    """The reason a delivery for `purpose` must be suppressed, or None when it may be sent."""
    if not require_consent or purpose is Purpose.CONTACT:
        return None
    if purpose is Purpose.MARKETING and not consent.marketing:
        return "no marketing consent"
    if purpose is Purpose.ANALYTICS and not consent.analytics:
        return "no analytics consent"
    return None


@dataclass(frozen=True)
class RequestContext:
    """What the server itself stamps on a consent decision: when, and from which client."""

    received_at: datetime
    ip: str | None
    user_agent: str | None


def consent_row(
    settings: Settings,
    decision: ConsentFields,
    *,
    user_session_id: UUID,
    event_id: UUID | None,
    source: str,
    context: RequestContext,
) -> dict[str, Any]:
    """The append-only ledger row for one decision; a notice version other than CONSENT_VERSION is flagged."""
    return {
        "consent_id": uuid.uuid4(),
        "user_session_id": user_session_id,
        "event_id": event_id,
        "marketing_consent": decision.marketing_consent,
        "analytics_consent": decision.analytics_consent,
        "consent_method": decision.consent_method.value,
        "consent_version": decision.consent_version,
        "consent_version_current": decision.consent_version == settings.consent_version,
        "source": source,
        "recorded_at": context.received_at,
        "ip": context.ip,
        "user_agent": context.user_agent,
    }


def record_consents(conn: duckdb.DuckDBPyConnection, rows: Sequence[dict[str, Any]]) -> list[ConsentRecord]:
    """Writer batch handler: append decisions and suppress what a withdrawal no longer allows."""
    store.insert_rows(conn, "consent_ledger", rows)
    records = []
    for row in rows:
        withdrawn = [
            purpose.value
            for purpose, given in (
                (Purpose.MARKETING, row["marketing_consent"]),
                (Purpose.ANALYTICS, row["analytics_consent"]),
            )
            if not given
        ]
        suppressed = 0
        if withdrawn:
            suppressed = store.suppress_pending_deliveries(
                conn,
                event_id=row["event_id"],
                user_session_id=row["user_session_id"],
                purposes=withdrawn,
                reason="consent withdrawn",
                now=row["recorded_at"],
            )
            if not row["marketing_consent"]:
                outbox_store.queue_unsubscribes(
                    conn,
                    event_id=row["event_id"],
                    user_session_id=row["user_session_id"],
                    consent_id=row["consent_id"],
                    now=row["recorded_at"],
                )
        records.append(ConsentRecord(**row, suppressed_deliveries=suppressed))
    return records
