"""MailerLite, CRM, sGTM (GA4 Measurement Protocol) and Meta (Conversions API) clients: the wire bodies of
CONTRACT.md, rendered at send time from the delivery row and the current lead row, with their headers, signature
and hashing.

One module per destination (`mailerlite`, `crm`, `sgtm`, `meta`) renders its request and reads the id its answer
carries (and, where the status alone does not tell, what the answer means); `transport` sends it; this registry
puts each destination's renderer, id parser, answer reader and limits together.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.outbox.destinations.crm import crm_contact_id, render_crm
from ingest.outbox.destinations.mailerlite import mailerlite_subscriber_id, render_mailerlite
from ingest.outbox.destinations.meta import meta_answer_fault, render_meta
from ingest.outbox.destinations.sgtm import render_sgtm
from ingest.outbox.destinations.transport import AnswerFault, ConnectionPool, HttpAnswer, OutgoingRequest
from ingest.outbox.records import ClaimedDelivery

Renderer = Callable[[ClaimedDelivery, Settings, datetime], OutgoingRequest]
IdParser = Callable[[Any], "str | None"]
AnswerReader = Callable[[HttpAnswer, Any], "AnswerFault | None"]

RENDERERS: dict[Destination, Renderer] = {
    Destination.MAILERLITE: render_mailerlite,
    Destination.CRM: render_crm,
    Destination.SGTM: render_sgtm,
    Destination.META: render_meta,
}
ID_PARSERS: dict[Destination, IdParser] = {
    Destination.MAILERLITE: mailerlite_subscriber_id,
    Destination.CRM: crm_contact_id,
    Destination.SGTM: lambda answer: None,
    Destination.META: lambda answer: None,
}
# Destinations whose answers need reading beyond their status; the others are judged by the status alone.
ANSWER_READERS: dict[Destination, AnswerReader] = {
    Destination.META: meta_answer_fault,
}


def destination_limits(settings: Settings, destination: Destination) -> tuple[int, int]:
    """(concurrency, requests per minute; 0 = unlimited) of one destination."""
    return {
        Destination.MAILERLITE: (settings.mailerlite_concurrency, settings.mailerlite_requests_per_minute),
        Destination.CRM: (settings.crm_concurrency, settings.crm_requests_per_minute),
        Destination.SGTM: (settings.sgtm_concurrency, settings.sgtm_requests_per_minute),
        Destination.META: (settings.meta_concurrency, settings.meta_requests_per_minute),
    }[destination]


class DestinationClient(ConnectionPool):
    """One destination: renders a claimed delivery and sends it over its own pool of keep-alive connections."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        concurrency, _ = destination_limits(settings, destination)
        super().__init__(concurrency=concurrency, timeout=settings.attribution_delivery_timeout_seconds)
        self.destination = destination
        self.settings = settings

    def render(self, claimed: ClaimedDelivery, now: datetime) -> OutgoingRequest:
        """The request for this delivery as of `now`; raises CannotRender."""
        return RENDERERS[self.destination](claimed, self.settings, now)

    def learned_id(self, answer: Any) -> str | None:
        """The subscriber / contact id a 2xx answer carries, if any."""
        return ID_PARSERS[self.destination](answer)

    def answer_fault(self, answer: HttpAnswer, parsed: Any) -> AnswerFault | None:
        """What the answer's body says went wrong where its status does not tell; None: judge by the status."""
        reader = ANSWER_READERS.get(self.destination)
        return reader(answer, parsed) if reader is not None else None


def build_clients(settings: Settings) -> dict[Destination, DestinationClient]:
    """A client for each configured destination."""
    enabled = settings.destinations_enabled()
    return {dest: DestinationClient(dest, settings) for dest in Destination if enabled[dest.value]}
