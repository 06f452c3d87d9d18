"""The delivery vocabulary, defined once: where a delivery goes, why, what it carries, and its states."""

from __future__ import annotations

from enum import StrEnum


class Destination(StrEnum):
    """Systems we forward to."""

    MAILERLITE = "mailerlite"
    CRM = "crm"
    SGTM = "sgtm"
    META = "meta"


class Purpose(StrEnum):
    """Why a delivery is made, which decides the consent it needs."""

    MARKETING = "marketing"  # MailerLite, Meta (ads measurement and optimisation)
    ANALYTICS = "analytics"  # sGTM / GA4
    CONTACT = "contact"  # the CRM: the business's own record of a lead, not gated by marketing consent


PURPOSE_OF = {
    Destination.MAILERLITE: Purpose.MARKETING,
    Destination.CRM: Purpose.CONTACT,
    Destination.SGTM: Purpose.ANALYTICS,
    Destination.META: Purpose.MARKETING,
}


class DeliveryKind(StrEnum):
    """What a delivery carries; the worker renders its request from the kind, the payload and the lead row."""

    SUBSCRIBER_UPSERT = "subscriber_upsert"  # MailerLite: the lead, later its payment status
    UNSUBSCRIBE = "unsubscribe"  # MailerLite: marketing consent withdrawn
    CONTACT_UPSERT = "contact_upsert"  # CRM: the lead, later its payment status
    GENERATE_LEAD = "generate_lead"  # sGTM: lead capture with analytics consent; Meta: its `Lead` event
    PURCHASE = "purchase"  # sGTM: a succeeded payment; Meta: its `Purchase` event
    REFUND = "refund"  # sGTM: a refund


class DeliveryStatus(StrEnum):
    """A delivery's state. `pending` and `retrying` wait to be sent; the others are final until a replay."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPPRESSED = "suppressed"
    DISABLED = "disabled"


WAITING = frozenset({DeliveryStatus.PENDING, DeliveryStatus.RETRYING})
