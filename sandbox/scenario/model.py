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
    # What the fakes keep of the lead (a silent loss answers 2xx and keeps nothing): MailerLite's subscriber
    # fields (event_id, payment_status) and whether the CRM holds its contact.
    subscriber: dict[str, str | None] | None = None
    in_crm_records: bool = False


@dataclass
class Payment:
    """One PaymentIntent (of a lead, or an orphan naming none) and the state its processed events moved it to."""

    payment_intent_id: str
    lead: Lead | None
    status: str = "open"  # open | failed | succeeded | refunded (only forward)
    analytics_at_success: bool = False  # the analytics consent in force when it was first known to succeed
    marketing_at_success: bool = False  # ... and the marketing consent (Meta's Purchase needs it)
    purchase_delivered: bool = False
    in_stripe: bool = (
        False  # Stripe holds it as succeeded (confirmed on localstripe, not only told in an event)
    )
    in_ga4: bool = False  # the sGTM fake kept its purchase


_RANK = {"open": 0, "failed": 1, "canceled": 2, "succeeded": 3, "refunded": 4}
_PAYMENT_STATUS = {
    "lead": "pending",
    "paid": "paid",
    "refunded": "refunded",
}  # MailerLite's field per lead status


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
        self.losing: set[str] = set()  # destinations answering 2xx and keeping nothing (silent loss)
        self.foreign: dict[str, set[str]] = {}  # system -> entries of records we never issued
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
        if destination in self.losing:
            self.count(f"{destination}_silent_losses")
        else:
            self._kept(lead, destination, kind, suffix)
        return True

    def _kept(self, lead: Lead, destination: str, kind: str, suffix: str | None) -> None:
        """What the fake holds after it kept a delivered request."""
        if destination == "mailerlite" and kind == "subscriber_upsert":
            lead.subscriber = {
                "event_id": str(lead.event_id),
                "payment_status": _PAYMENT_STATUS[suffix or "lead"],
            }
        elif destination == "crm":
            lead.in_crm_records = True
        elif destination == "sgtm" and kind == "purchase" and suffix is not None:
            self.payments[suffix].in_ga4 = True

    def unsubscribe(self, session: uuid.UUID, event_id: uuid.UUID | None) -> None:
        """A marketing withdrawal through /v1/consent: the service unsubscribes every journey of the session (or the
        event) it had upserted (lead capture itself queues none); upserting an address MailerLite does not hold creates a subscriber with empty fields."""
        if not self.enabled("mailerlite") or "mailerlite" in self.rejecting or "mailerlite" in self.losing:
            return
        for lead in self.leads:
            if (lead.session == session or lead.event_id == event_id) and (
                "mailerlite:subscriber_upsert" in lead.delivered and lead.subscriber is None
            ):
                lead.subscriber = {"event_id": None, "payment_status": None}

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
        if not marketing:
            self.unsubscribe(lead.session, lead.event_id if name_event else None)

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

    def lead_status(self, lead: Lead) -> str:
        """The lead's status as the service keeps it: lead, paid or refunded (the furthest of its payments)."""
        states = [p.status for p in self.payments.values() if p.lead is lead]
        if "refunded" in states:
            return "refunded"
        return "paid" if "succeeded" in states else "lead"

    def systems(self) -> dict[str, dict[str, list[Any]]]:
        """What `attribution reconcile` must find once every system's records are read: per system the journeys
        missing, the records unexpected and the (journey, field) pairs stale; and verified_data_consistency."""
        params = self.params
        found: dict[str, dict[str, list[Any]]] = {
            name: {"missing": [], "unexpected": sorted(self.foreign.get(name, set())), "stale": []}
            for name in ("stripe", "mailerlite", "crm", "ga4")
        }
        consistent = 0
        for lead in self.leads:
            journey = str(lead.event_id)
            paid = [
                p for p in self.payments.values() if p.lead is lead and p.status in ("succeeded", "refunded")
            ]
            marketing, _ = self.consent(lead)
            due = {
                "crm": params.crm_enabled and params.crm_enable_lead_capture,
                "mailerlite": params.mailerlite_enabled and (marketing or not params.require_consent),
                "stripe": bool(paid),
                "ga4": params.sgtm_enabled
                and any(p.analytics_at_success or not params.require_consent for p in paid),
            }
            held = {
                "crm": lead.in_crm_records,
                "mailerlite": lead.subscriber is not None,
                "stripe": any(p.in_stripe for p in paid),
                "ga4": any(p.in_ga4 for p in paid),
            }
            for system, expected in due.items():
                if expected and not held[system]:
                    found[system]["missing"].append(journey)
            consistent += all(held[system] or not expected for system, expected in due.items())
            if (
                due["mailerlite"]
                and lead.subscriber is not None
                and "mailerlite:subscriber_upsert" in lead.delivered
            ):
                ours = {"event_id": journey, "payment_status": _PAYMENT_STATUS[self.lead_status(lead)]}
                for name in ("event_id", "payment_status"):
                    if lead.subscriber[name] != ours[name]:
                        found["mailerlite"]["stale"].append([journey, name])
        orphans = [
            p for p in self.payments.values() if p.lead is None and p.status in ("succeeded", "refunded")
        ]
        for payment in orphans:
            if not payment.in_stripe:
                found["stripe"]["missing"].append(f"orphan:{payment.payment_intent_id}")
        for entry in found.values():
            entry["missing"].sort()
            entry["stale"].sort()
        found["verified_data_consistency"] = {"value": [consistent, len(self.leads) + len(orphans)]}
        return found
