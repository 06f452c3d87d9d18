"""Backfill from Stripe: list the Events of the last 30 days and feed the unsettled ones to the webhook handler.

Webhooks can be missed (the service was down, localstripe never retries) or fail; Stripe keeps Events for 30
days. A cursor in the store remembers how far the last sync got, less an overlap, so a later run lists only the
recent part; an event already settled is seen and skipped, a failed one is processed again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import stripe
from pydantic import BaseModel
from stripe.params import EventListParams

from ingest.core.clock import UtcTimestamp, utcnow
from ingest.core.errors import Conflict
from ingest.core.settings import Settings
from ingest.payments import repository
from ingest.payments.checkout import StripeUnavailable
from ingest.payments.events import InvalidWebhook, StripeEvent, parse_event
from ingest.payments.webhooks import (
    DUPLICATE,
    FAILED,
    IGNORED,
    PROCESSED,
    REJECTED,
    SETTLED,
    EventJob,
    EventProcessingFailed,
    receive_events_sync,
)
from ingest.store.database import Database

log = logging.getLogger(__name__)

SYNC_WINDOW = timedelta(days=30)  # how long Stripe keeps Events
CURSOR_OVERLAP = timedelta(minutes=5)  # Events can show up in the list a little after their `created`
CURSOR_NAME = "events"
PAGE_SIZE = 100
SUBMIT_CHUNK = 500
_running = threading.Lock()


class SyncAlreadyRunning(Conflict):
    """A Stripe sync is already running, in this process or (PostgreSQL) on another instance."""


class SyncReport(BaseModel):
    """What one sync saw and did."""

    since: UtcTimestamp
    seen: int
    new: int
    retried: int
    processed: int
    duplicates: int
    ignored: int
    failed: int
    rejected: int  # stored as rejected: they can never be processed (see the webhook route)
    invalid: int
    cursor: UtcTimestamp | None


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def list_events(client: stripe.StripeClient, since: datetime) -> tuple[list[StripeEvent], int]:
    """Events created at or after `since`, oldest first, and how many had a shape we refuse."""
    params: EventListParams = {
        "created": {"gte": int(since.replace(tzinfo=UTC).timestamp())},
        "limit": PAGE_SIZE,
    }
    events: list[StripeEvent] = []
    invalid = 0
    try:
        for listed in client.v1.events.list(params=params).auto_paging_iter():
            try:
                events.append(parse_event(json.dumps(listed.to_dict())))
            except InvalidWebhook as exc:
                invalid += 1
                log.warning(
                    "Stripe event with an unexpected shape skipped",
                    extra={"stripe_event_id": listed.id, "error": str(exc)},
                )
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"listing Stripe events failed ({type(exc).__name__})") from exc
    events.sort(key=lambda event: (event.created_at or datetime.min, event.stripe_event_id))
    return events, invalid


def _save_cursor(conn: duckdb.DuckDBPyConnection, cursors: Sequence[tuple[datetime, datetime]]) -> list[None]:
    for created_cursor_at, now in cursors:
        repository.set_sync_cursor(conn, CURSOR_NAME, created_cursor_at, now)
    return [None for _ in cursors]


def sync_stripe_events(
    settings: Settings,
    database: Database,
    client: stripe.StripeClient,
    *,
    since: datetime | None = None,
    now: datetime | None = None,
) -> SyncReport:
    """List recent Stripe Events and process the ones not settled yet; one sync at a time, across instances too."""
    if not _running.acquire(blocking=False):
        raise SyncAlreadyRunning("a Stripe sync is already running")
    try:
        return database.read(
            lambda conn: _sync_alone(conn, settings, database, client, since, now or utcnow())
        )
    finally:
        _running.release()


def _sync_alone(
    conn: Any,
    settings: Settings,
    database: Database,
    client: stripe.StripeClient,
    since: datetime | None,
    now: datetime,
) -> SyncReport:
    # Processing is exactly once without it (the inbox locks each event); the lock spares a second instance listing
    # the same 30 days from Stripe and the two cursors overwriting each other.
    with repository.instance_lock(conn, repository.SYNC_LOCKS, CURSOR_NAME, wait=False) as alone:
        if not alone:
            raise SyncAlreadyRunning("a Stripe sync is already running on another instance")
        return _sync(settings, database, client, since=since, now=now)


def _sync(
    settings: Settings,
    database: Database,
    client: stripe.StripeClient,
    *,
    since: datetime | None,
    now: datetime,
) -> SyncReport:
    floor = now - SYNC_WINDOW
    if since is None:
        cursor = database.read(lambda conn: repository.get_sync_cursor(conn, CURSOR_NAME))
        start = cursor - CURSOR_OVERLAP if cursor is not None else floor
    else:
        start = _naive_utc(since)
    start = max(start, floor)
    events, invalid = list_events(client, start)
    ids = [event.stripe_event_id for event in events]
    stored = database.read(lambda conn: repository.lookup_events(conn, ids, ()).statuses)
    pending = [event for event in events if stored.get(event.stripe_event_id) not in SETTLED]
    counts = dict.fromkeys((PROCESSED, DUPLICATE, IGNORED, FAILED, REJECTED), 0)
    failed_at: list[datetime] = []
    for offset in range(0, len(pending), SUBMIT_CHUNK):
        chunk = pending[offset : offset + SUBMIT_CHUNK]
        jobs = [
            EventJob(event=event, source="sync", received_at=utcnow(), settings=settings) for event in chunk
        ]
        for event, result in zip(chunk, receive_events_sync(database, jobs), strict=True):
            if isinstance(result, EventProcessingFailed):
                counts[FAILED] += 1
                if event.created_at is not None:
                    failed_at.append(event.created_at)
            else:
                counts[DUPLICATE if result.duplicate else result.status] += 1
    # Next time, start from the oldest failure (so it is retried) or else from the newest event seen.
    created = [event.created_at for event in events if event.created_at is not None]
    cursor = min(failed_at) if failed_at else (max(created) if created else None)
    if cursor is not None:
        database.writer.submit_sync(_save_cursor, (cursor, utcnow()))
    report = SyncReport(
        since=start,
        seen=len(events),
        new=sum(1 for event in events if event.stripe_event_id not in stored),
        retried=sum(1 for event in pending if stored.get(event.stripe_event_id) == FAILED),
        processed=counts[PROCESSED],
        duplicates=counts[DUPLICATE],
        ignored=counts[IGNORED],
        failed=counts[FAILED],
        rejected=counts[REJECTED],
        invalid=invalid,
        cursor=cursor,
    )
    log.info("Stripe sync finished", extra=report.model_dump(mode="json"))
    return report
