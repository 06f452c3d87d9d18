"""The scenario's model of the visitors and of the service: what must be true after each HTTP call it makes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ingest.reconcile.models import ModelParams


@dataclass
class Lead:
    """One lead the scenario captured: its request body, and what the service planned and delivered for it."""

    index: int
    event_id: uuid.UUID
    session: uuid.UUID
    body: dict[str, Any]
    delivered: set[str] = field(default_factory=set)  # "<destination>:<kind>" delivered at least once
    planned: set[str] = field(default_factory=set)  # idempotency keys the service planned


@dataclass
class Payment:
    """One PaymentIntent (of a lead, or an orphan naming none) and the state its processed events moved it to."""

    payment_intent_id: str
    lead: Lead | None
    status: str = "open"  # open | failed | succeeded | refunded (only forward)
    analytics_at_success: bool = False  # the analytics consent in force when it was first known to succeed
    marketing_at_success: bool = False  # ... and the marketing consent (Meta's Purchase needs it)
    purchase_delivered: bool = False


_RANK = {"open": 0, "failed": 1, "canceled": 2, "succeeded": 3, "refunded": 4}


class ServiceModel:
    """The scenario's model of the service: decisions, deliveries, payments and events, as they must be."""

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self.decisions: list[tuple[uuid.UUID, uuid.UUID | None, bool, bool]] = []  # in the order recorded
        self.leads: list[Lead] = []
        self.payments: dict[str, Payment] = {}
        self.events: set[str] = set()  # Stripe event ids the service stores
        self.failed_events: set[str] = set()  # ... of which processing failed and never later succeeded
        self.needing_consent = 0  # delivered MailerLite (not unsubscribe), sGTM and Meta deliveries
        self.with_consent = 0
        self.rejecting: set[str] = set()  # destinations answering every request with a permanent 4xx
        self.injected: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.injected[what] = self.injected.get(what, 0) + n

    def consent(self, lead: Lead) -> tuple[bool, bool]:
        """The consent in force now: the latest decision for the lead's session or naming its event_id."""
        for session, event_id, marketing, analytics in reversed(self.decisions):
            if session == lead.session or event_id == lead.event_id:
                return marketing, analytics
        return False, False

    def enabled(self, destination: str) -> bool:
        return bool(getattr(self.params, f"{destination}_enabled"))

    def plan(self, lead: Lead, destination: str, kind: str, suffix: str | None = None) -> bool:
        """One delivery the service plans now; whether it ends delivered (not suppressed, disabled or rejected)."""
        key = f"{destination}:{kind}" + (f":{suffix}" if suffix else "")
        if key in lead.planned:
            return False  # the outbox's idempotency key: planned once
        lead.planned.add(key)
        marketing, analytics = self.consent(lead)
        needs = {"mailerlite": marketing, "sgtm": analytics, "meta": marketing}.get(destination)
        if self.params.require_consent and needs is False:
            return False  # suppressed
        if not self.enabled(destination) or destination in self.rejecting:
            return False  # disabled, or sent and rejected for good (dead)
        lead.delivered.add(f"{destination}:{kind}")
        if needs is not None:
            self.needing_consent += 1
            self.with_consent += int(needs)
        return True

    def capture(self, lead: Lead, marketing: bool, analytics: bool) -> None:
        self.leads.append(lead)
        self.decisions.append((lead.session, lead.event_id, marketing, analytics))
        self.plan(lead, "mailerlite", "subscriber_upsert")
        self.plan(lead, "sgtm", "generate_lead")
        self.plan(lead, "meta", "generate_lead")
        if self.params.crm_enable_lead_capture:
            self.plan(lead, "crm", "contact_upsert")

    def decide(self, lead: Lead, marketing: bool, analytics: bool, *, name_event: bool) -> None:
        self.decisions.append((lead.session, lead.event_id if name_event else None, marketing, analytics))

    def move(self, payment: Payment, status: str) -> None:
        """A processed event moves a payment forward and plans what its new state implies."""
        known_before = payment.status in ("succeeded", "refunded")
        if _RANK[status] > _RANK[payment.status]:
            payment.status = status
        lead = payment.lead
        if lead is None or payment.status not in ("succeeded", "refunded"):
            return
        if not known_before:
            payment.marketing_at_success, payment.analytics_at_success = self.consent(lead)
        state = "paid" if payment.status == "succeeded" else "refunded"
        self.plan(lead, "crm", "contact_upsert", state)
        self.plan(lead, "mailerlite", "subscriber_upsert", state)
        if self.plan(lead, "sgtm", "purchase", payment.payment_intent_id):
            payment.purchase_delivered = True
        self.plan(lead, "meta", "purchase", payment.payment_intent_id)  # once, refunded later or not
        if payment.status == "refunded":
            self.plan(lead, "sgtm", "refund", payment.payment_intent_id)

    def metrics(self) -> dict[str, tuple[int, int]]:
        params = self.params
        consistent = 0
        for lead in self.leads:
            paid = [
                p for p in self.payments.values() if p.lead is lead and p.status in ("succeeded", "refunded")
            ]
            marketing, _ = self.consent(lead)
            expected = {
                "crm:contact_upsert": params.crm_enabled and params.crm_enable_lead_capture,
                "mailerlite:subscriber_upsert": params.mailerlite_enabled
                and (marketing or not params.require_consent),
                "sgtm:purchase": params.sgtm_enabled
                and any(p.analytics_at_success or not params.require_consent for p in paid),
                "meta:purchase": params.meta_enabled
                and any(p.marketing_at_success or not params.require_consent for p in paid),
            }
            consistent += all(key in lead.delivered or not due for key, due in expected.items())
        in_scope = [
            p
            for p in self.payments.values()
            if p.lead is not None
            and p.status in ("succeeded", "refunded")
            and (p.analytics_at_success or not params.require_consent)
        ]
        orphans = [
            p for p in self.payments.values() if p.lead is None and p.status in ("succeeded", "refunded")
        ]
        return {
            "attribution_accuracy": (sum(p.purchase_delivered for p in in_scope), len(in_scope)),
            "data_consistency": (consistent, len(self.leads) + len(orphans)),
            "consent_compliance": (self.with_consent, self.needing_consent),
            "system_resilience": (len(self.failed_events), len(self.events)),
            "crm_coverage": (
                sum("crm:contact_upsert" in lead.delivered for lead in self.leads),
                len(self.leads),
            ),
        }
