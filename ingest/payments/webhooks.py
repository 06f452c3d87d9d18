"""Stripe events: verify the signature, store each event once by its id, and apply payment changes exactly once.

Webhooks and `attribution sync stripe` feed the same batch handler, `handle_events`, which runs in the writer's
transaction: it decides "new, already settled, or a retry of a failure" there (one instance's writer serialises its
writes; on PostgreSQL the transaction first takes a lock every instance sees on each event and on what it changes, so
concurrent copies of one event on any instances cannot both pass), inserts the raw event, and applies the allow-listed types
together with the payment and lead state change and the outbox rows it causes. A failure rolls all of that back;
`record_failures` then stores the event with its error in a second writer job, so the error row survives and the
next delivery of that event is processed (the bug of dj-stripe issue #832 is to treat it as already seen).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import duckdb
from pydantic import BaseModel

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryKind, Destination
from ingest.outbox.gate import ConsentState
from ingest.outbox.planning import Delivery, plan_delivery
from ingest.payments import repository
from ingest.payments.events import (
    PaymentChange,
    StripeEvent,
)
from ingest.store.database import Database
from ingest.store.rows import insert_rows
from ingest.store.writer import StoreUnavailable

log = logging.getLogger(__name__)

# stripe_events.status: settled rows are never processed again; a failed row is, on its next delivery. A rejected
# event is one that can never be processed (its payload is out of range or of a shape we cannot read): it is kept
# with the reason and settled, so Stripe's retries of it are acknowledged instead of failing for days.
PROCESSED, IGNORED, DUPLICATE, FAILED, REJECTED = "processed", "ignored", "duplicate", "failed", "rejected"
SETTLED = frozenset({PROCESSED, IGNORED, DUPLICATE, REJECTED})

# payments.status and leads.status only move forward along these orders.
PAYMENT_RANK = {"open": 0, "failed": 1, "canceled": 2, "succeeded": 3, "refunded": 4}
LEAD_RANK = repository.LEAD_RANK
LEAD_STATUS_OF_PAYMENT = {"succeeded": "paid", "refunded": "refunded"}

_MAX_ERROR_LENGTH = 2000


class EventProcessingFailed(Exception):
    """Processing a stored event failed; the error is kept on its row and the next delivery retries it."""

    def __init__(self, stripe_event_id: str, error: str) -> None:
        super().__init__(f"processing Stripe event {stripe_event_id} failed: {error}")
        self.stripe_event_id = stripe_event_id
        self.error = error


class EventAck(BaseModel):
    """The answer to Stripe: the event is committed (and processed, if it is a type we handle).

    `status` says how it was settled; `rejected` (with its `reason`) is an event that can never be processed,
    kept for review and acknowledged so that Stripe stops retrying it.
    """

    received: bool = True
    duplicate: bool
    status: str = PROCESSED
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventJob:
    """One event to store and process, and where it came from (webhook | sync)."""

    event: StripeEvent
    source: str
    received_at: datetime
    settings: Settings


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """How a committed event was settled; `duplicate` when it, or the change it reports, was already settled."""

    stripe_event_id: str
    status: str
    duplicate: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventFailure:
    """A processing failure to record on the event row."""

    job: EventJob
    error: str


# --- processing (writer batch handlers) --------------------------------------------------------------------


def _event_row(
    job: EventJob, status: str, *, error: str | None = None, duplicate_of: str | None = None
) -> dict[str, Any]:
    event = job.event
    return {
        "stripe_event_id": event.stripe_event_id,
        "event_type": event.event_type,
        "object_id": event.object_id,
        "stripe_created_at": event.created_at,
        "received_at": job.received_at,
        "source": job.source,
        "payload": event.payload,
        "status": status,
        "error": error if status != REJECTED else event.rejection,
        "processing_attempts": 1 if status in (PROCESSED, FAILED, REJECTED) else 0,
        "processed_at": job.received_at if status != FAILED else None,
        "change_key": event.change_key,
        "duplicate_of": duplicate_of,
    }


def _new_payment(payment_intent_id: str, source: str, now: datetime) -> dict[str, Any]:
    return {
        "payment_intent_id": payment_intent_id,
        "event_id": None,
        "user_session_id": None,
        "amount_cents": None,
        "currency": None,
        "status": "open",
        "is_orphan": True,
        "refunded_cents": 0,
        "failure_code": None,
        "source": source,
        "created_at": now,
        "updated_at": now,
        "succeeded_at": None,
        "refunded_at": None,
        "last_stripe_event_id": None,
        "charge_id": None,
        "expected_amount_cents": None,
        "expected_currency": None,
        "is_price_mismatch": False,
    }


def _apply_change(
    payment: dict[str, Any], change: PaymentChange, stripe_event_id: str, now: datetime, settings: Settings
) -> None:
    """Move one payment forward by what an event reports; a change that would move it back is ignored."""
    if payment["event_id"] is None and change.metadata_event_id is not None:
        payment["event_id"] = change.metadata_event_id
    if change.target_status == "succeeded" and change.amount_cents is not None:
        payment["amount_cents"] = change.amount_cents  # what was actually received
    elif payment["amount_cents"] is None:
        payment["amount_cents"] = change.amount_cents
    payment["currency"] = payment["currency"] or change.currency
    payment["charge_id"] = payment["charge_id"] or change.charge_id
    payment["refunded_cents"] = max(payment["refunded_cents"], change.refunded_cents)
    target = change.target_status
    if target is not None and PAYMENT_RANK[target] > PAYMENT_RANK[payment["status"]]:
        payment["status"] = target
    if target == "failed" and payment["status"] == "failed":
        payment["failure_code"] = change.failure_code
    # Also set when a refund got here first: the payment did succeed, and this is when we heard of it.
    if change.target_status == "succeeded" and payment["succeeded_at"] is None:
        payment["succeeded_at"] = now
    if payment["status"] == "refunded" and payment["refunded_at"] is None:
        payment["refunded_at"] = now
    _check_price(payment, settings)
    payment["updated_at"] = now
    payment["last_stripe_event_id"] = stripe_event_id


def _check_price(payment: dict[str, Any], settings: Settings) -> None:
    """Flag a succeeded payment whose amount or currency is not the product's: kept and counted apart, for review.

    The expectation is the one in force when the payment was first checked, so a later price change does not
    re-flag past sales.
    """
    if payment["status"] not in LEAD_STATUS_OF_PAYMENT or settings.product_price_cents is None:
        return
    if payment["expected_amount_cents"] is None:
        payment["expected_amount_cents"] = settings.product_price_cents
        payment["expected_currency"] = settings.product_currency
    payment["is_price_mismatch"] = (
        payment["amount_cents"] != payment["expected_amount_cents"]
        or payment["currency"] != payment["expected_currency"]
    )


def _keep_unlinked_refund(
    unlinked: dict[str, dict[str, Any]], change: PaymentChange, stripe_event_id: str, now: datetime
) -> None:
    """A refund of a charge no stored payment holds: kept on its own for review, never as a second payment."""
    charge_id = str(change.charge_id)
    log.warning(
        "refund of a charge no stored payment holds: kept as an unlinked refund",
        extra={"charge_id": charge_id, "stripe_event_id": stripe_event_id},
    )
    known = unlinked.get(charge_id)
    unlinked[charge_id] = {
        "charge_id": charge_id,
        "event_id": change.metadata_event_id,
        "amount_cents": change.amount_cents,
        "refunded_cents": max(change.refunded_cents, known["refunded_cents"] if known else 0),
        "currency": change.currency,
        "first_seen_at": known["first_seen_at"] if known else now,
        "updated_at": now,
        "last_stripe_event_id": stripe_event_id,
    }


def _implied_deliveries(
    settings: Settings,
    payment: dict[str, Any],
    lead: repository.LeadJourney,
    consent: ConsentState,
    now: datetime,
    happened_at: datetime | None = None,
) -> list[Delivery]:
    """The outbox rows a payment's state implies (those already stored are skipped by idempotency key).

    The CRM and MailerLite hold a state, so they get the current one (paid or refunded); sGTM and Meta get
    events, so a refund also implies the purchase before it, even when the refund was heard of first (Meta has no
    refund event: its Purchase is sent once, refunded later or not). `happened_at` is when Stripe created the
    event that made the success known: Meta's event_time.
    """
    status = payment["status"]
    if status not in LEAD_STATUS_OF_PAYMENT:
        return []
    state = LEAD_STATUS_OF_PAYMENT[status]
    payment_intent_id = payment["payment_intent_id"]
    amount = payment["amount_cents"] or 0
    currency = payment["currency"] or settings.product_currency  # stored lower-case; renderers send it upper
    common: dict[str, Any] = {
        "event_id": lead.event_id,
        "user_session_id": lead.user_session_id,
        "consent": consent,
        "now": now,
    }
    planned = [
        plan_delivery(
            settings,
            destination=Destination.CRM,
            kind=DeliveryKind.CONTACT_UPSERT,
            key_suffix=state,
            payload={
                "lead_status": state,
                "amount_cents": amount,
                "currency": currency,
                "payment_intent_id": payment_intent_id,
            },
            **common,
        ),
        plan_delivery(
            settings,
            destination=Destination.MAILERLITE,
            kind=DeliveryKind.SUBSCRIBER_UPSERT,
            key_suffix=state,
            payload={"payment_status": state},
            **common,
        ),
        plan_delivery(
            settings,
            destination=Destination.SGTM,
            kind=DeliveryKind.PURCHASE,
            key_suffix=payment_intent_id,
            payload={"transaction_id": payment_intent_id, "value": amount / 100, "currency": currency},
            **common,
        ),
        plan_delivery(
            settings,
            destination=Destination.META,
            kind=DeliveryKind.PURCHASE,
            key_suffix=payment_intent_id,
            payload={
                "transaction_id": payment_intent_id,
                "value": amount / 100,
                "currency": currency,
                "event_time": min(happened_at or now, now).isoformat(),
            },
            **common,
        ),
    ]
    if status == "refunded":
        refunded = payment["refunded_cents"] or amount
        planned.append(
            plan_delivery(
                settings,
                destination=Destination.SGTM,
                kind=DeliveryKind.REFUND,
                key_suffix=payment_intent_id,
                payload={"transaction_id": payment_intent_id, "value": refunded / 100, "currency": currency},
                **common,
            )
        )
    return planned


def _apply_events(
    conn: duckdb.DuckDBPyConnection, jobs: Sequence[EventJob], now: datetime, *, lone: bool
) -> None:
    """Apply the payment changes of `jobs` in order: payments, leads and outbox rows, a few statements in all."""
    changes = [(job, job.event.change) for job in jobs if job.event.change is not None]
    # A refund of a charge that names no PaymentIntent belongs to the payment holding that charge.
    intent_of_charge = repository.payment_intents_of_charges(
        conn,
        {change.charge_id for _, change in changes if change.payment_intent_id is None and change.charge_id},
    )
    payments = repository.get_payments(
        conn,
        {change.payment_intent_id for _, change in changes if change.payment_intent_id is not None}
        | set(intent_of_charge.values()),
    )
    stored = {key: dict(row) for key, row in payments.items()}  # as they were, to write only what changes
    named = {change.metadata_event_id for _, change in changes if change.metadata_event_id is not None}
    named |= {row["event_id"] for row in payments.values() if row["event_id"] is not None}
    leads = repository.lead_journeys(conn, named)
    lead_status = {event_id: lead.status for event_id, lead in leads.items()}
    touched_leads: dict[UUID, dict[str, Any]] = {}
    planned: dict[str, Delivery] = {}
    unlinked: dict[str, dict[str, Any]] = {}
    for job, change in changes:
        payment_intent_id = change.payment_intent_id or intent_of_charge.get(str(change.charge_id))
        if payment_intent_id is None:
            _keep_unlinked_refund(unlinked, change, job.event.stripe_event_id, now)
            continue
        payment = payments.get(payment_intent_id)
        if payment is None:
            payment = payments[payment_intent_id] = _new_payment(payment_intent_id, job.source, now)
        _apply_change(payment, change, job.event.stripe_event_id, now, job.settings)
        if payment["charge_id"] is not None:
            intent_of_charge[payment["charge_id"]] = payment_intent_id
        lead = leads.get(payment["event_id"]) if payment["event_id"] is not None else None
        payment["is_orphan"] = lead is None
        if lead is None:
            log.warning(
                "orphan payment: its metadata names no stored lead",
                extra={
                    "payment_intent_id": payment["payment_intent_id"],
                    "stripe_event_id": job.event.stripe_event_id,
                },
            )
            continue
        payment["user_session_id"] = lead.user_session_id
        wanted = LEAD_STATUS_OF_PAYMENT.get(payment["status"])
        current = lead_status[lead.event_id]
        if wanted is not None and LEAD_RANK[wanted] > LEAD_RANK[current]:
            lead_status[lead.event_id] = current = wanted
        if wanted is not None or lead.payment_intent_id is None:
            touched_leads[lead.event_id] = {
                "event_id": lead.event_id,
                "status": current,
                "payment_intent_id": payment["payment_intent_id"],
                "updated_at": now,
            }
        # No decision on record means nothing consent-gated is sent.
        consent = ConsentState(
            marketing=lead.consent is not None and lead.consent.marketing,
            analytics=lead.consent is not None and lead.consent.analytics,
        )
        implied = _implied_deliveries(job.settings, payment, lead, consent, now, job.event.created_at)
        for delivery in implied:
            planned.setdefault(delivery.idempotency_key, delivery)
    # A batch inserts its outbox rows optimistically: in DuckDB a plain insert costs a fraction of an
    # insert-if-absent. A row whose key exists (the state was reached before, e.g. a refund heard of before the
    # success) makes the insert raise; the writer then retries each job alone, and a lone job filters first.
    existing = repository.existing_delivery_keys(conn, planned) if lone else set()
    repository.insert_payments(conn, [row for key, row in payments.items() if key not in stored])
    changed = {
        key: {name for name in repository.PAYMENT_UPDATES if row[name] != stored[key][name]}
        for key, row in payments.items()
        if key in stored
    }
    repository.update_payments(
        conn,
        [payments[key] for key, names in changed.items() if names],
        set().union(*changed.values()),
    )
    repository.update_lead_payments(conn, list(touched_leads.values()))
    repository.upsert_unlinked_refunds(conn, list(unlinked.values()))
    insert_rows(conn, "deliveries", [d.as_row() for key, d in planned.items() if key not in existing])


def _lock_names(jobs: Sequence[EventJob]) -> set[str]:
    """What processing on another instance at the same moment must not share with these jobs: each event, and the
    PaymentIntent, charge and journey it changes (a second event object for the same change names the same ones)."""
    names: set[str] = set()
    for job in jobs:
        event, change = job.event, job.event.change
        names.add(event.stripe_event_id)
        if change is not None:
            touched = (event.object_id, change.payment_intent_id, change.charge_id, change.metadata_event_id)
            names |= {str(name) for name in touched if name is not None}
    return names


def handle_events(conn: duckdb.DuckDBPyConnection, jobs: Sequence[EventJob]) -> list[EventOutcome]:
    """Writer batch handler: store each event once and apply the allow-listed ones, in one transaction."""
    # Held until this transaction ends: another instance's copy of an event waits here, then reads it as settled.
    repository.lock_names(conn, repository.STRIPE_LOCKS, _lock_names(jobs))
    now = utcnow()
    lookup = repository.lookup_events(
        conn,
        [job.event.stripe_event_id for job in jobs],
        [job.event.change_key for job in jobs if job.event.change is not None],
    )
    stored, done_changes = lookup.statuses, lookup.processed_changes
    outcomes: list[EventOutcome] = []
    new_rows: list[dict[str, Any]] = []
    settled_failures: list[tuple[str, str, str | None, str | None]] = []
    to_apply: list[EventJob] = []
    for job in jobs:
        event = job.event
        prior = stored.get(event.stripe_event_id)
        if prior in SETTLED:
            reason = event.rejection if prior == REJECTED else None
            outcomes.append(EventOutcome(event.stripe_event_id, str(prior), duplicate=True, reason=reason))
            continue
        duplicate_of = None
        if event.rejection is not None:
            status = REJECTED
            _log_rejection(job)
        elif event.change is None:
            status = IGNORED
        elif event.change_key in done_changes:
            status, duplicate_of = DUPLICATE, done_changes[event.change_key]
        else:
            status = PROCESSED
            done_changes[event.change_key] = event.stripe_event_id
            to_apply.append(job)
        stored[event.stripe_event_id] = status
        if prior is None:
            new_rows.append(_event_row(job, status, duplicate_of=duplicate_of))
        else:  # it failed before: this delivery settles it (dj-stripe #832)
            settled_failures.append((event.stripe_event_id, status, duplicate_of, event.rejection))
        outcomes.append(
            EventOutcome(event.stripe_event_id, status, duplicate=status == DUPLICATE, reason=event.rejection)
        )
    if to_apply:
        _apply_events(conn, to_apply, now, lone=len(jobs) == 1)
    repository.insert_events(conn, new_rows)
    for stripe_event_id, status, duplicate_of, rejection in settled_failures:
        repository.settle_event(conn, stripe_event_id, status, duplicate_of, now, rejection=rejection)
    return outcomes


def record_failures(conn: duckdb.DuckDBPyConnection, failures: Sequence[EventFailure]) -> list[None]:
    """Writer batch handler: keep each failed event with its error, in a transaction of its own."""
    for failure in failures:
        repository.record_event_failure(conn, _event_row(failure.job, FAILED, error=failure.error))
    return [None for _ in failures]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_LENGTH]


def _log_rejection(job: EventJob) -> None:
    log.error(
        "Stripe event rejected: it can never be processed; kept for review and acknowledged",
        extra={
            "stripe_event_id": job.event.stripe_event_id,
            "event_type": job.event.event_type,
            "error": job.event.rejection,
        },
    )


def _log_failure(job: EventJob, error: str) -> None:
    log.error(
        "Stripe event processing failed; kept for retry",
        extra={
            "stripe_event_id": job.event.stripe_event_id,
            "event_type": job.event.event_type,
            "error": error,
        },
    )


async def receive_event(database: Database, job: EventJob) -> EventOutcome:
    """Store and process one event; on failure keep the error on its row and raise EventProcessingFailed."""
    try:
        return await database.writer.submit(handle_events, job)
    except StoreUnavailable:
        raise  # nothing can be written, the failure neither: answered 503 and Stripe retries
    except Exception as exc:  # any failure rolls the processing back; it is recorded, logged and answered 5xx
        error = _describe(exc)
        _log_failure(job, error)
        try:
            await database.writer.submit(record_failures, EventFailure(job, error))
        except (duckdb.Error, StoreUnavailable) as record_exc:
            log.error(
                "recording the failure failed too",
                extra={"stripe_event_id": job.event.stripe_event_id, "error": _describe(record_exc)},
            )
        raise EventProcessingFailed(job.event.stripe_event_id, error) from exc


def receive_events_sync(
    database: Database, jobs: Sequence[EventJob]
) -> list[EventOutcome | EventProcessingFailed]:
    """Blocking form of receive_event for many events at once (sync, CLI): queue all, then wait for each."""
    futures: list[Future[EventOutcome]] = [database.writer.submit_nowait(handle_events, job) for job in jobs]
    results: list[EventOutcome | EventProcessingFailed] = []
    for job, future in zip(jobs, futures, strict=True):
        try:
            results.append(future.result())
        except StoreUnavailable:
            raise
        except Exception as exc:  # recorded on the event row and counted as failed, like a webhook's 5xx
            error = _describe(exc)
            _log_failure(job, error)
            database.writer.submit_sync(record_failures, EventFailure(job, error))
            results.append(EventProcessingFailed(job.event.stripe_event_id, error))
    return results
