"""The consent ledger: one append-only row per decision, and what a withdrawal suppresses."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb

from ingest.core.settings import Settings
from ingest.core.vocabulary import Purpose
from ingest.leads.schemas import ConsentFields, ConsentRecord
from ingest.outbox import repository as outbox_repository
from ingest.store.rows import insert_rows


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
    insert_rows(conn, "consent_ledger", rows)
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
            suppressed = outbox_repository.suppress_pending_deliveries(
                conn,
                event_id=row["event_id"],
                user_session_id=row["user_session_id"],
                purposes=withdrawn,
                reason="consent withdrawn",
                now=row["recorded_at"],
            )
            if not row["marketing_consent"]:
                outbox_repository.queue_unsubscribes(
                    conn,
                    event_id=row["event_id"],
                    user_session_id=row["user_session_id"],
                    consent_id=row["consent_id"],
                    now=row["recorded_at"],
                )
        records.append(ConsentRecord(**row, suppressed_deliveries=suppressed))
    return records
