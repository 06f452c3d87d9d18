"""Pull: read what Stripe and MailerLite hold over their APIs into the ext_* tables, each system's records replacing
its previous pull in one transaction.

Every page is read before anything is written, so a pull that fails or is killed half way leaves the previous
pull in force, never a mix. Stripe is read with the official SDK (PaymentIntents with their metadata, auto-paginated;
the client is passed in, built where the payments feature builds it). MailerLite is read with `GET /api/subscribers`
and its cursor pages, paced at MAILERLITE_REQUESTS_PER_MINUTE, waiting out each 429 for its Retry-After.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import stripe

from ingest.core.clock import utcnow
from ingest.core.errors import DomainError, InvalidField, NotConfigured
from ingest.core.settings import Settings
from ingest.outbox.delivery import parse_retry_after
from ingest.outbox.pacing import Pacer
from ingest.reconcile.repository import Records, records_table
from ingest.reconcile.schemas import PulledSystem, PullIn, PullOut, RecordSource, System

log = logging.getLogger(__name__)

MAILERLITE_PAGE_SIZE = 1000
MAILERLITE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
STRIPE_PAGE_SIZE = 100
MAX_RATE_LIMITED = 30  # 429s in a row before the pull gives up
MAX_FAILURES = 4  # 5xx answers or transport errors in a row before the pull gives up
DEFAULT_RETRY_AFTER_SECONDS = 60.0
FAILURE_BACKOFF_SECONDS = 1.0

# (system, records read so far, records in all when the system says)
Progress = Callable[[System, int, int | None], None]
Write = Callable[[Records], int]


class SystemUnavailable(DomainError):
    """A system could not be read (unreachable, refusing, or failing); nothing of its pull was written."""


def _no_progress(system: System, done: int, total: int | None) -> None:
    pass


@dataclass
class _Listing:
    """What one system's listing read: its rows, column by column, and how the reading went."""

    columns: dict[str, list[Any]]
    pages: int = 0
    rate_limited: int = 0

    @property
    def count(self) -> int:
        first = next(iter(self.columns.values()))
        return len(first)


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


# --- Stripe ---------------------------------------------------------------------------------------------------


def list_stripe_payment_intents(
    client: stripe.StripeClient, since: datetime | None, progress: Progress = _no_progress
) -> _Listing:
    """Every PaymentIntent Stripe holds (created at or after `since`), with its metadata event_id.

    The window is applied here rather than with `created[gte]`: localstripe refuses that filter on PaymentIntents,
    and the same code must meet both.
    """
    listing = _Listing({"payment_intent_id": [], "status": [], "amount_cents": [], "currency": [], "event_id": [],
                        "stripe_created_at": []})  # fmt: skip
    columns = listing.columns
    try:
        page = client.v1.payment_intents.list(params={"limit": STRIPE_PAGE_SIZE})
        for intent in page.auto_paging_iter():
            created = (
                datetime.fromtimestamp(intent.created, UTC).replace(tzinfo=None) if intent.created else None
            )
            if since is not None and (created is None or created < since):
                continue
            metadata = intent.metadata.to_dict() if intent.metadata is not None else {}
            columns["payment_intent_id"].append(intent.id)
            columns["status"].append(intent.status)
            columns["amount_cents"].append(intent.amount)
            columns["currency"].append(intent.currency)
            columns["event_id"].append(metadata.get("event_id"))
            columns["stripe_created_at"].append(created)
            if len(columns["payment_intent_id"]) % STRIPE_PAGE_SIZE == 0:
                listing.pages += 1
                progress(System.STRIPE, listing.count, None)
    except stripe.StripeError as exc:
        raise SystemUnavailable(
            f"Stripe could not be listed: {type(exc).__name__}: {exc.user_message or exc}"
        ) from None
    listing.pages += 1
    progress(System.STRIPE, listing.count, listing.count)
    return listing


# --- MailerLite -----------------------------------------------------------------------------------------------


def _subscriber_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.strptime(value[:19], MAILERLITE_DATE_FORMAT)
    except ValueError:
        try:
            return _naive_utc(datetime.fromisoformat(value))
        except ValueError:
            return None


class _MailerLiteReader:
    """GET /api/subscribers page by page: paced, 429s waited out, failures retried a few times."""

    def __init__(
        self, settings: Settings, http: httpx.Client, sleep: Callable[[float], None], pacer: Pacer
    ) -> None:
        assert settings.mailerlite_api_key is not None
        self.url = settings.mailerlite_base_url.rstrip("/") + "/api/subscribers"
        self.headers = {
            "Authorization": f"Bearer {settings.mailerlite_api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        self.http = http
        self.sleep = sleep
        self.pacer = pacer
        self.rate_limited = 0

    def get(self, params: dict[str, Any]) -> dict[str, Any]:
        limited = failures = 0
        while True:
            wait = self.pacer.reserve()
            if wait > 0:
                self.sleep(wait)
            try:
                response = self.http.get(self.url, params=params, headers=self.headers)
            except httpx.HTTPError as exc:
                failures += 1
                if failures >= MAX_FAILURES:
                    raise SystemUnavailable(
                        f"MailerLite could not be reached: {type(exc).__name__}"
                    ) from None
                self.sleep(FAILURE_BACKOFF_SECONDS * 2 ** (failures - 1))
                continue
            if response.status_code == 429:
                limited += 1
                self.rate_limited += 1
                if limited > MAX_RATE_LIMITED:
                    raise SystemUnavailable(f"MailerLite kept answering 429 ({limited} times in a row)")
                seconds = parse_retry_after(response.headers.get("retry-after"), utcnow())
                self.pacer.pause(DEFAULT_RETRY_AFTER_SECONDS if seconds is None else seconds)
                log.info("mailerlite listing rate limited", extra={"retry_after": seconds})
                continue
            if response.status_code >= 500:
                failures += 1
                if failures >= MAX_FAILURES:
                    raise SystemUnavailable(
                        f"MailerLite answered {response.status_code} {failures} times in a row"
                    )
                self.sleep(FAILURE_BACKOFF_SECONDS * 2 ** (failures - 1))
                continue
            if response.status_code != 200:
                raise SystemUnavailable(
                    f"MailerLite refused the listing ({response.status_code}): {response.text[:200]}"
                )
            try:
                body = response.json()
            except ValueError:
                raise SystemUnavailable(
                    "MailerLite answered the listing with something that is not JSON"
                ) from None
            if not isinstance(body, dict):
                raise SystemUnavailable("MailerLite answered the listing with an unexpected shape")
            return body


def list_mailerlite_subscribers(
    settings: Settings,
    http: httpx.Client,
    since: datetime | None,
    progress: Progress = _no_progress,
    *,
    page_size: int = MAILERLITE_PAGE_SIZE,
    sleep: Callable[[float], None] = time.sleep,
    pacer: Pacer | None = None,
) -> _Listing:
    """Every subscriber MailerLite lists (updated at or after `since`), following `meta.next_cursor`.

    MailerLite's listing has no date filter, so the window is applied here, on each subscriber's updated_at.
    """
    reader = _MailerLiteReader(settings, http, sleep, pacer or Pacer(settings.mailerlite_requests_per_minute))
    counted = reader.get({"limit": 0})  # {"total": N}: the size of the listing, for the progress bar
    total = counted.get("total") if isinstance(counted.get("total"), int) else None
    listing = _Listing({"subscriber_id": [], "email": [], "status": [], "event_id": [], "payment_status": [],
                        "subscriber_updated_at": []})  # fmt: skip
    columns = listing.columns
    seen = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page_size}
        if cursor:
            params["cursor"] = cursor
        body = reader.get(params)
        data = body.get("data")
        if not isinstance(data, list):
            raise SystemUnavailable("MailerLite's listing page has no data list")
        listing.pages += 1
        for subscriber in data:
            if not isinstance(subscriber, dict) or not isinstance(subscriber.get("email"), str):
                raise SystemUnavailable("MailerLite listed a subscriber without an email")
            seen += 1
            updated = _subscriber_time(subscriber.get("updated_at") or subscriber.get("created_at"))
            if since is not None and (updated is None or updated < since):
                continue
            fields: dict[str, Any] = (
                subscriber["fields"] if isinstance(subscriber.get("fields"), dict) else {}
            )
            columns["subscriber_id"].append(None if subscriber.get("id") is None else str(subscriber["id"]))
            columns["email"].append(subscriber["email"].strip().lower())
            columns["status"].append(subscriber.get("status"))
            columns["event_id"].append(None if fields.get("event_id") is None else str(fields["event_id"]))
            columns["payment_status"].append(
                None if fields.get("payment_status") is None else str(fields["payment_status"])
            )
            columns["subscriber_updated_at"].append(updated)
        progress(System.MAILERLITE, seen, total)
        meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
        cursor = meta.get("next_cursor")
        if not cursor or not data:
            break
    listing.rate_limited = reader.rate_limited
    return listing


# --- the pull ---------------------------------------------------------------------------------------------------


def systems_to_pull(
    settings: Settings, request: PullIn, stripe_client: stripe.StripeClient | None
) -> list[System]:
    """The systems asked for (default: those configured); one asked for but not configured is refused."""
    configured = {
        System.STRIPE: stripe_client is not None,
        System.MAILERLITE: settings.mailerlite_api_key is not None,
    }
    if request.systems is None:
        chosen = [system for system in (System.STRIPE, System.MAILERLITE) if configured[system]]
        if not chosen:
            raise NotConfigured(
                "neither Stripe (STRIPE_SECRET_KEY) nor MailerLite (MAILERLITE_API_KEY) is configured"
            )
        return chosen
    for system in request.systems:
        if system not in configured:  # the request's mistake, whatever is configured: a 422 naming the field
            raise InvalidField(
                "systems",
                f"{system} keeps no API to pull: import its export with `attribution reconcile import`",
            )
        if not configured[system]:
            key = "STRIPE_SECRET_KEY" if system is System.STRIPE else "MAILERLITE_API_KEY"
            raise NotConfigured(f"{system} is not configured: set {key}")
    return list(dict.fromkeys(request.systems))


def pull_systems(
    settings: Settings,
    request: PullIn,
    write: Write,
    *,
    stripe_client: stripe.StripeClient | None,
    http: httpx.Client | None = None,
    progress: Progress = _no_progress,
    sleep: Callable[[float], None] = time.sleep,
) -> PullOut:
    """Read each system asked for completely, then replace its records with what was read (one write each)."""
    systems = systems_to_pull(settings, request, stripe_client)
    since = _naive_utc(request.since)
    pulled = []
    own_http = http is None
    client = http or httpx.Client(timeout=settings.attribution_delivery_timeout_seconds)
    try:
        for system in systems:
            pulled_at = utcnow()
            if system is System.STRIPE:
                assert stripe_client is not None
                listing = list_stripe_payment_intents(stripe_client, since, progress)
            else:
                listing = list_mailerlite_subscribers(settings, client, since, progress, sleep=sleep)
            rows = records_table(system, listing.columns)
            write(Records(system, RecordSource.API, pulled_at, rows, since=since))
            log.info("system records pulled", extra={"system": system.value, "records": rows.num_rows})
            pulled.append(
                PulledSystem(
                    system=system,
                    records=rows.num_rows,
                    pulled_at=pulled_at,
                    since=since,
                    pages=listing.pages,
                    rate_limited=listing.rate_limited,
                )
            )
    finally:
        if own_http:
            client.close()
    return PullOut(pulled=pulled)
