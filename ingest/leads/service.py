"""Lead capture: one lead, its consent ledger row and its outbox rows, committed together."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from uuid import UUID

import duckdb
import phonenumbers

from ingest.core.errors import Conflict, DomainError, InvalidField
from ingest.core.settings import Settings
from ingest.core.vocabulary import WAITING, DeliveryKind, DeliveryStatus, Destination
from ingest.leads import repository
from ingest.leads.consent import RequestContext, consent_row
from ingest.leads.schemas import DestinationOutcome, LeadIn, LeadOut
from ingest.outbox.gate import ConsentState
from ingest.outbox.planning import Delivery, plan_delivery
from ingest.store.rows import insert_rows

# The deliveries lead capture waits for and reports in its answer.
INLINE_KINDS = (DeliveryKind.SUBSCRIBER_UPSERT, DeliveryKind.CONTACT_UPSERT)


def normalise_phone(raw: str, default_region: str) -> str:
    """A phone number in E.164, read with the shop's default region when it has no country code."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidField("phone", f"not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidField("phone", "not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class LeadPlan:
    """Everything one lead capture will write, decided before the transaction opens."""

    lead: dict[str, Any]
    consent: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)

    @cached_property
    def event_id(self) -> UUID:
        """The journey's event_id (read several times a lead, on the event loop and on the writer thread)."""
        return UUID(str(self.lead["event_id"]))


def plan_lead(settings: Settings, lead_in: LeadIn, context: RequestContext) -> LeadPlan:
    """Validate what needs settings, stamp server-side facts and decide the outbox rows."""
    now = context.received_at
    event_id = lead_in.event_id or uuid.uuid4()
    user_session_id = lead_in.user_session_id or uuid.uuid4()
    phone = (
        normalise_phone(lead_in.phone, settings.attribution_default_phone_region) if lead_in.phone else None
    )
    consent = consent_row(
        settings, lead_in, user_session_id=user_session_id, event_id=event_id, source="lead", context=context
    )
    lead = lead_in.model_dump(exclude={"consent_method"}) | {
        "event_id": event_id,
        "user_session_id": user_session_id,
        "phone": phone,
        "lead_created_at": lead_in.lead_created_at or now,
        "checkout_started_at": lead_in.checkout_started_at,
        "consent_method": lead_in.consent_method.value,
        "consent_version_current": consent["consent_version_current"],
        "consent_at": now,
        "consent_ip": context.ip,
        "consent_user_agent": context.user_agent,
        # Meta's browser ids identify the person for ads: kept only with marketing consent.
        "fbp": lead_in.fbp if lead_in.marketing_consent else None,
        "fbc": lead_in.fbc if lead_in.marketing_consent else None,
        "status": "lead",
        "received_at": now,
        "updated_at": now,
    }
    state = ConsentState(marketing=lead_in.marketing_consent, analytics=lead_in.analytics_consent)

    def planned(
        destination: Destination, kind: DeliveryKind, payload: dict[str, Any] | None = None
    ) -> Delivery:
        return plan_delivery(
            settings,
            destination=destination,
            kind=kind,
            event_id=event_id,
            user_session_id=user_session_id,
            consent=state,
            now=now,
            payload=payload,
        )

    deliveries = [
        planned(Destination.MAILERLITE, DeliveryKind.SUBSCRIBER_UPSERT),
        planned(Destination.SGTM, DeliveryKind.GENERATE_LEAD),
        # Meta's Lead happened when the lead reached us (lead_created_at is the browser's clock, and may be
        # anything); its event_time is fixed now so a late send cannot move it.
        planned(Destination.META, DeliveryKind.GENERATE_LEAD, {"event_time": now.isoformat()}),
    ]
    if settings.crm_enable_lead_capture:
        deliveries.append(planned(Destination.CRM, DeliveryKind.CONTACT_UPSERT))
    return LeadPlan(lead=lead, consent=consent, deliveries=deliveries)


def _outcome(
    state: tuple[str, str | None] | None, response_id: str | None, id_field: str
) -> DestinationOutcome:
    if state is None:
        return DestinationOutcome(status="disabled", reason="lead capture is off for this destination")
    status, reason = state
    shown = "queued" if status in WAITING else "failed" if status == DeliveryStatus.DEAD else status
    extra = {id_field: response_id} if response_id else {}
    return DestinationOutcome(status=shown, reason=reason, **extra)


def inline_deliveries(plan: LeadPlan) -> dict[UUID, Destination]:
    """The MailerLite and CRM deliveries lead capture waits for (so its answer can carry their ids), by id."""
    return {
        d.delivery_id: d.destination
        for d in plan.deliveries
        if d.kind in INLINE_KINDS and d.status == DeliveryStatus.PENDING
    }


def lead_answer(plan: LeadPlan, *, duplicate: bool, conn: duckdb.DuckDBPyConnection | None = None) -> LeadOut:
    """The API answer for a stored lead: from the plan when new, from the stored rows for a repeat."""
    states: dict[str, tuple[str, str | None]]
    if conn is None:
        states = {
            d.destination.value: (d.status, d.reason) for d in plan.deliveries if d.kind in INLINE_KINDS
        }
        subscriber_id = contact_id = None
    else:
        states = repository.lead_delivery_states(conn, plan.event_id, INLINE_KINDS)
        subscriber_id, contact_id = repository.lead_response_ids(conn, plan.event_id)
    return LeadOut(
        event_id=plan.event_id,
        user_session_id=plan.lead["user_session_id"],
        duplicate=duplicate,
        consent_version_current=plan.consent["consent_version_current"],
        mailerlite=_outcome(states.get(Destination.MAILERLITE.value), subscriber_id, "subscriber_id"),
        crm=_outcome(states.get(Destination.CRM.value), contact_id, "contact_id"),
    )


@dataclass(frozen=True)
class LeadCaptured:
    """A lead capture that is committed: new, or a repeat of one already stored."""

    plan: LeadPlan
    duplicate: bool


def capture_leads(
    conn: duckdb.DuckDBPyConnection, plans: Sequence[LeadPlan]
) -> list[LeadCaptured | DomainError]:
    """Writer batch handler: insert new leads with their ledger and outbox rows; repeats insert nothing."""
    first: dict[UUID, LeadPlan] = {}
    for plan in plans:
        first.setdefault(plan.event_id, plan)
    # A batch inserts optimistically: in DuckDB a plain insert costs a fraction of an insert-or-ignore. If one of its
    # event_ids is already stored the insert raises, the writer rolls the batch back and retries each job alone,
    # and a lone job looks its event_id up first.
    stored: dict[UUID, tuple[str, UUID]] = {}
    if len(plans) == 1 and (known := repository.lead_identity(conn, plans[0].event_id)) is not None:
        stored[plans[0].event_id] = known
    new = [plan for event_id, plan in first.items() if event_id not in stored]
    insert_rows(conn, "leads", [plan.lead for plan in new])
    insert_rows(conn, "consent_ledger", [plan.consent for plan in new])
    insert_rows(conn, "deliveries", [d.as_row() for plan in new for d in plan.deliveries])
    results: list[LeadCaptured | DomainError] = []
    for plan in plans:
        owner = first[plan.event_id].lead
        email, user_session_id = stored.get(plan.event_id, (owner["email"], owner["user_session_id"]))
        if plan.event_id not in stored and plan is first[plan.event_id]:
            results.append(LeadCaptured(plan, duplicate=False))
        elif email.casefold() == plan.lead["email"].casefold():
            stored_plan = LeadPlan(
                lead=plan.lead | {"user_session_id": user_session_id}, consent=plan.consent
            )
            results.append(LeadCaptured(stored_plan, duplicate=True))
        else:
            results.append(Conflict(f"event_id {plan.event_id} already belongs to a lead with another email"))
    return results
