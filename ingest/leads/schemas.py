"""Request and response shapes of the HTTP API, with the validation a browser's input needs."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from ingest.core.clock import InputTimestamp, UtcTimestamp

# Control characters (C0 and DEL: NUL, escape sequences, line breaks) have no place in a name, a UTM value or a
# notice version, and would be stored and forwarded to MailerLite and the CRM as they came.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: object) -> object:
    """Refuse control characters; trim whitespace and invisible format characters (zero-width spaces, BOMs)."""
    if not isinstance(value, str):
        return value
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    trimmed = value.strip()
    start, end = 0, len(trimmed)
    while start < end and (trimmed[start].isspace() or unicodedata.category(trimmed[start]) == "Cf"):
        start += 1
    while end > start and (trimmed[end - 1].isspace() or unicodedata.category(trimmed[end - 1]) == "Cf"):
        end -= 1
    return trimmed[start:end]


def _clean_or_none(value: object) -> object:
    cleaned = _clean(value)
    return cleaned or None


# Text a browser sends: trimmed, never holding control characters; an optional one left empty is absent.
Text = Annotated[str, BeforeValidator(_clean)]
ShortText = Annotated[Annotated[str, Field(max_length=200)] | None, BeforeValidator(_clean_or_none)]
UrlText = Annotated[Annotated[str, Field(max_length=2048)] | None, BeforeValidator(_clean_or_none)]
_GA_CLIENT_ID = re.compile(r"^(?:GA\d\.\d+\.)?(\d{1,20}\.\d{1,20})$")
# Meta's browser ids: `fb.<subdomain index>.<creation time, ms>.<random number | fbclid>` (_fbp / _fbc cookies).
_META_BROWSER_ID = re.compile(r"^fb\.\d\.\d{9,14}\.[A-Za-z0-9_.\-]{1,480}$")


def _meta_browser_id(value: object) -> object:
    """A well-formed _fbp / _fbc value, else None: a stray cookie must never cost the lead."""
    cleaned = _clean_or_none(value)
    if isinstance(cleaned, str) and not _META_BROWSER_ID.match(cleaned):
        return None
    return cleaned


MetaBrowserId = Annotated[Annotated[str, Field(max_length=500)] | None, BeforeValidator(_meta_browser_id)]


class ConsentMethod(StrEnum):
    """How the visitor gave (or refused) consent."""

    MODAL = "modal"
    CHECKBOX = "checkbox"
    IMPLIED = "implied"


class ConsentFields(BaseModel):
    """The consent decision a browser sends with a lead or on its own."""

    model_config = ConfigDict(str_strip_whitespace=True)

    marketing_consent: StrictBool
    analytics_consent: StrictBool
    consent_method: ConsentMethod
    consent_version: Text = Field(min_length=1, max_length=32)


class LeadIn(ConsentFields):
    """Step-1 of the checkout: who the buyer is, where they came from, and what they consented to."""

    event_id: UUID | None = None
    user_session_id: UUID | None = None
    full_name: Text = Field(min_length=1, max_length=200)
    email: Text = Field(min_length=3, max_length=254, json_schema_extra={"format": "email"})
    phone: ShortText = None
    utm_source: ShortText = None
    utm_medium: ShortText = None
    utm_campaign: ShortText = None
    utm_content: ShortText = None
    utm_term: ShortText = None
    landing_page: UrlText = None
    referrer: UrlText = None
    ga_client_id: ShortText = None
    # Meta's _fbp / _fbc (attribution.js sends them with marketing consent only; the server keeps them only then).
    fbp: MetaBrowserId = None
    fbc: MetaBrowserId = None
    lead_created_at: InputTimestamp | None = None
    checkout_started_at: InputTimestamp | None = None

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("ga_client_id")
    @classmethod
    def _ga_client_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _GA_CLIENT_ID.match(value)
        if not match:
            raise ValueError("expected GA's client id, '<number>.<number>' or the _ga cookie value")
        return match.group(1)


class ConsentIn(ConsentFields):
    """A consent decision from the consent modal, with or without a lead yet."""

    user_session_id: UUID
    event_id: UUID | None = None


# Where a destination stands in the lead-capture answer: the delivery's status, with pending and retrying
# shown as queued and dead as failed (ingest.core.vocabulary.DeliveryStatus is the delivery's own state).
LeadDeliveryAnswer = Literal["delivered", "queued", "suppressed", "disabled", "failed"]


class DestinationOutcome(BaseModel):
    """Where one destination's delivery for this lead stands."""

    status: LeadDeliveryAnswer
    subscriber_id: str | None = None
    contact_id: str | None = None
    reason: str | None = None


class LeadOut(BaseModel):
    """The answer to lead capture, sent after the lead and its deliveries are committed."""

    success: bool = True
    event_id: UUID
    user_session_id: UUID
    duplicate: bool
    consent_version_current: bool
    mailerlite: DestinationOutcome
    crm: DestinationOutcome


class ConsentRecord(BaseModel):
    """One row of the consent ledger, as recorded."""

    user_session_id: UUID
    event_id: UUID | None
    marketing_consent: bool
    analytics_consent: bool
    consent_method: ConsentMethod
    consent_version: str
    consent_version_current: bool
    recorded_at: UtcTimestamp
    suppressed_deliveries: int


class ConsentOut(BaseModel):
    """The answer to a consent decision."""

    recorded: bool = True
    consent: ConsentRecord
