"""The consent gate: which delivery purposes the consent in force allows, checked at planning and at send time."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.core.vocabulary import Purpose


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
