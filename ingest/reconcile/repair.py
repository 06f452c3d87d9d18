"""Repair: re-send through the outbox what a system misses or holds stale by its own records.

Each repair is a fresh delivery (its own idempotency key; the earlier deliveries and their attempts stay as
history), planned with the consent in force now: a journey without the consent a destination needs is reported and
never queued, and the worker checks the consent again when it sends. Stripe is never written (checkout creates its
records; `attribution sync stripe` reads what it holds), and an orphan payment has no lead to send.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb

from ingest.core.errors import Conflict, DomainError
from ingest.core.settings import Settings
from ingest.core.vocabulary import PURPOSE_OF, DeliveryKind, DeliveryStatus
from ingest.outbox.destinations.mailerlite import UPDATE_ONLY
from ingest.outbox.gate import ConsentState, consent_gate
from ingest.outbox.planning import Delivery, plan_delivery
from ingest.outbox.repository import Journeys, journeys, sent_or_waiting
from ingest.reconcile.replica import live_models
from ingest.reconcile.repository import pull_stamps
from ingest.reconcile.schemas import DESTINATION_OF, NotRepaired, RepairIn, RepairItem, RepairOut, System
from ingest.store.database import Database
from ingest.store.postgres import is_postgres
from ingest.store.rows import insert_rows

# The advisory lock a repair holds on PostgreSQL while it plans and inserts (any constant every instance shares).
REPAIR_LOCK_KEY = 0x72657061  # "repa"
KIND_OF = {
    System.MAILERLITE: DeliveryKind.SUBSCRIBER_UPSERT,
    System.CRM: DeliveryKind.CONTACT_UPSERT,
    System.GA4: DeliveryKind.PURCHASE,
}


@dataclass(frozen=True)
class Candidate:
    """One delivery a repair would queue (a row of the repair_candidates model)."""

    system: System
    event_id: UUID
    why: str
    transaction_id: str | None
    amount_cents: int | None
    currency: str | None
    user_session_id: UUID


@dataclass(frozen=True)
class Findings:
    """What the models say a repair should re-send, and what it cannot."""

    candidates: list[Candidate]
    not_repairable: list[NotRepaired]


def find_repairs(conn: duckdb.DuckDBPyConnection, system: System | None) -> Findings:
    """From a connection the models are loaded on: what to re-send (to `system`, or every system with records)."""
    wanted = [system.value] if system is not None else [item.value for item in System]
    rows = conn.execute(
        "select system, event_id, why, transaction_id, amount_cents, currency, user_session_id from repair_candidates "
        "where system in (select unnest(?::varchar[])) order by system, event_id, transaction_id",
        [wanted],
    ).fetchall()
    candidates = [Candidate(System(row[0]), *row[1:]) for row in rows]
    left = conn.execute(
        """
        select system, journey_id, 'missing' as why, is_orphan from system_missing
        where system in (select unnest(?::varchar[])) and (system = 'stripe' or is_orphan)
        union all
        select distinct system, journey_id, 'stale ' || field, false from system_stale
        where system in (select unnest(?::varchar[])) and system = 'stripe'
        order by 1, 2, 3
        """,
        [wanted, wanted],
    ).fetchall()
    not_repairable = [
        NotRepaired(
            system=System(row[0]),
            event_id=str(row[1]),
            reason=f"{row[2]}: "
            + (
                "an orphan payment names no lead of ours, so there is nothing to send"
                if row[3]
                else "Stripe's records are written by checkout, never by a repair; check the payment in Stripe"
            ),
        )
        for row in left
    ]
    return Findings(candidates, not_repairable)


def _consent_now(found: Journeys, candidate: Candidate) -> ConsentState | None:
    lead = found.leads.get(str(candidate.event_id))
    if lead is None:
        return None
    decisions = [
        item
        for item in (
            found.consent_by_event.get(str(candidate.event_id)),
            found.consent_by_session.get(str(candidate.user_session_id)),
        )
        if item is not None
    ]
    if decisions:
        _, marketing, analytics = max(decisions, key=lambda item: item[0])
        return ConsentState(marketing=bool(marketing), analytics=bool(analytics))
    return ConsentState(marketing=bool(lead["marketing_consent"]), analytics=bool(lead["analytics_consent"]))


def _already_sent(
    conn: duckdb.DuckDBPyConnection, candidates: Sequence[Candidate]
) -> dict[tuple[str, ...], str]:
    """Why a candidate must not be queued again: a delivery of it is waiting, or one went out after the system's
    records were read (they cannot show it yet, and a second purchase would count twice in GA4)."""
    as_of = {
        DESTINATION_OF[system].value: stamp.pulled_at
        for system, stamp in pull_stamps(conn).items()
        if system in DESTINATION_OF
    }
    already: dict[tuple[str, ...], str] = {}
    for event_id, destination, kind, transaction_id, status, created_at in sent_or_waiting(
        conn, [candidate.event_id for candidate in candidates]
    ):
        key = (event_id, destination, kind, transaction_id)
        if status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
            already[key] = "a delivery of it is already waiting to be sent"
        elif key not in already and destination in as_of and created_at > as_of[destination]:
            already[key] = (
                f"it was re-sent after the records were read ({as_of[destination]:%Y-%m-%d %H:%M:%S} UTC)"
            )
    return already


def _payload(candidate: Candidate) -> dict[str, Any]:
    # The outbox renders MailerLite and CRM bodies from the lead as it is when sent, so they carry nothing, but for a
    # subscriber MailerLite already holds (stale): that repair only updates its fields, never its status, so it
    # cannot re-subscribe someone who unsubscribed there. An sGTM purchase names its payment, as the webhook's does.
    if candidate.system is System.MAILERLITE and candidate.why != "missing":
        return {UPDATE_ONLY: True}
    if candidate.system is not System.GA4:
        return {}
    return {
        "transaction_id": candidate.transaction_id,
        "value": (candidate.amount_cents or 0) / 100,
        "currency": candidate.currency,
    }


def plan_repairs(
    conn: duckdb.DuckDBPyConnection, settings: Settings, findings: Findings, now: datetime
) -> tuple[list[tuple[RepairItem, Delivery]], list[NotRepaired]]:
    """The fresh deliveries the findings call for, each gated by the consent in force now; and what is left."""
    found = journeys(
        conn,
        [candidate.event_id for candidate in findings.candidates],
        [candidate.user_session_id for candidate in findings.candidates],
    )
    already = _already_sent(conn, findings.candidates)
    planned: list[tuple[RepairItem, Delivery]] = []
    left = list(findings.not_repairable)
    batch = uuid.uuid4().hex[:12]
    for candidate in findings.candidates:
        event_id = str(candidate.event_id)
        consent = _consent_now(found, candidate)
        if consent is None:
            left.append(NotRepaired(system=candidate.system, event_id=event_id, reason="no lead stored"))
            continue
        destination = DESTINATION_OF[candidate.system]
        kind = KIND_OF[candidate.system]
        done = already.get((event_id, destination.value, kind.value, candidate.transaction_id or ""))
        if done is not None:
            reason = f"{candidate.why}, but {done}: not queued twice (pull or import again to check it)"
            left.append(NotRepaired(system=candidate.system, event_id=event_id, reason=reason))
            continue
        refused = consent_gate(PURPOSE_OF[destination], consent, require_consent=settings.require_consent)
        if refused is not None:
            left.append(
                NotRepaired(
                    system=candidate.system,
                    event_id=event_id,
                    reason=f"{candidate.why}, but {refused} in force now: not re-sent",
                )
            )
            continue
        suffix = f"repair:{batch}" + (f":{candidate.transaction_id}" if candidate.transaction_id else "")
        delivery = plan_delivery(
            settings,
            destination=destination,
            kind=kind,
            event_id=candidate.event_id,
            user_session_id=candidate.user_session_id,
            consent=consent,
            now=now,
            payload=_payload(candidate),
            key_suffix=suffix,
        )
        if delivery.status is not DeliveryStatus.PENDING:
            left.append(
                NotRepaired(
                    system=candidate.system,
                    event_id=event_id,
                    reason=f"{candidate.why}, but {delivery.reason}",
                )
            )
            continue
        item = RepairItem(
            system=candidate.system,
            event_id=event_id,
            why=candidate.why,
            delivery_id=str(delivery.delivery_id),
            transaction_id=candidate.transaction_id,
        )
        planned.append((item, delivery))
    return planned, left


@dataclass(frozen=True)
class RepairRequest:
    """A repair to queue at `now` from the findings read just before."""

    settings: Settings
    findings: Findings
    now: datetime


def queue_repairs(
    conn: duckdb.DuckDBPyConnection, requests: Sequence[RepairRequest]
) -> list[RepairOut | DomainError]:
    """Writer batch handler: plan each repair's deliveries with the consent in force and insert them.

    Two instances planning at the same moment would each find nothing waiting and queue the same re-sends, so on
    PostgreSQL one repair plans at a time: the lock is the transaction's, and a repair that finds it taken is
    refused (409: try again) rather than kept waiting while its writer holds other rows.
    """
    answers: list[RepairOut | DomainError] = []
    for request in requests:
        if is_postgres(conn) and not _repair_lock(conn):
            answers.append(Conflict("another instance is queueing a repair right now; try again in a moment"))
            continue
        planned, left = plan_repairs(conn, request.settings, request.findings, request.now)
        insert_rows(conn, "deliveries", [delivery.as_row() for _, delivery in planned])
        answers.append(RepairOut(dry_run=False, queued=[item for item, _ in planned], not_repaired=left))
    return answers


def _repair_lock(conn: duckdb.DuckDBPyConnection) -> bool:
    row = conn.execute("select pg_try_advisory_xact_lock(?)", [REPAIR_LOCK_KEY]).fetchone()
    return bool(row and row[0])


def repair_now(database: Database, settings: Settings, request: RepairIn, now: datetime) -> RepairOut:
    """Find on the live database what the systems miss or hold stale, and queue (or, dry, list) its re-sends."""
    findings = live_models(database, settings, lambda conn: find_repairs(conn, request.system))
    if request.dry_run:
        planned, left = database.read(lambda conn: plan_repairs(conn, settings, findings, now))
        items = [item.model_copy(update={"delivery_id": None}) for item, _ in planned]
        return RepairOut(dry_run=True, queued=items, not_repaired=left)
    return database.writer.submit_sync(queue_repairs, RepairRequest(settings, findings, now))
