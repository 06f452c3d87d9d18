"""The dashboard's queries: cached, parameterised selects from the models of ingest/sql/ over the replica.

One `ReplicaSource` (`dashboard.snapshots`) per replica path lives for the whole Streamlit server
(`st.cache_resource`). Results are cached with `st.cache_data`, keyed by the copy they were read from, so two
sessions looking at the same copy query it once.

Every figure here is selected from a model: the metrics and their daily trend from sql/metrics/, why a journey is
missing from missing_journeys and journey_gaps, and so on; nothing is recounted here. The dead-letter list and one delivery's detail are
the outbox's own reads (`ingest.outbox.replay`). Every value comes in as a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import pandas as pd
import streamlit as st

from dashboard.snapshots import ReplicaSource, Snapshot, plain
from ingest.core.settings import Settings, load_settings
from ingest.core.vocabulary import DeliveryStatus, Destination
from ingest.outbox.replay import DeliveryDetail, DeliveryFilter, get_delivery, list_deliveries
from ingest.reconcile.models import Metric, success_metrics

CACHE_SECONDS = 600  # a bound on memory; a new replica changes the key long before
CACHE_ENTRIES = 64
MISSING_LIMIT = 500
DEAD_LETTER_LIMIT = 200


# --- the shared source --------------------------------------------------------------------------------------


def settings() -> Settings:
    """This process's settings (environment and `.env`)."""
    return load_settings()


@st.cache_resource(show_spinner=False)
def _source_for(replica_path: str, _settings: Settings) -> ReplicaSource:
    return ReplicaSource(_settings)


def source() -> ReplicaSource:
    """The ReplicaSource of the configured replica path, one per server."""
    current = settings()
    return _source_for(str(current.attribution_replica_path), current)


def snapshot() -> Snapshot:
    """The replica copy this rerun reads (NoReplica when none is published)."""
    return source().snapshot()


# --- overview -----------------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def metrics(snapshot_key: str) -> list[Metric]:
    """The five success metrics, exactly as `attribution report` computes them."""
    return source().run(success_metrics)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def daily_metrics(snapshot_key: str) -> pd.DataFrame:
    """Each metric's numerator, denominator and value per day (of capture, payment, delivery or receipt)."""
    return source().frame(
        "select day, metric, numerator, denominator, value from success_metrics_daily "
        "where day is not null order by day, metric"
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def outbox_health(snapshot_key: str) -> pd.DataFrame:
    """Per destination: deliveries waiting and dead, since when the oldest waiting one is due, its circuit."""
    return source().frame(
        "select destination, waiting_count, dead_count, oldest_due_at, is_circuit_open, circuit_changed_at "
        "from outbox_health order by destination"
    )


# --- funnel and attribution ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelBounds:
    """What the funnel filters can choose from."""

    first_day: date | None
    last_day: date | None
    campaigns: list[str]


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def funnel_bounds(snapshot_key: str) -> FunnelBounds:
    """The first and last lead day and every campaign seen."""
    frame = source().frame(
        "select min(lead_day) as first_day, max(lead_day) as last_day, "
        "list(distinct utm_campaign order by utm_campaign) as campaigns from funnel_daily"
    )
    row = frame.iloc[0]
    campaigns = row["campaigns"]
    return FunnelBounds(
        first_day=_as_date(row["first_day"]),
        last_day=_as_date(row["last_day"]),
        campaigns=[str(name) for name in campaigns] if campaigns is not None else [],
    )


def _as_date(value: Any) -> date | None:
    if value is None or pd.isna(value):
        return None
    day: date = pd.Timestamp(value).date()
    return day


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def funnel_rows(
    snapshot_key: str, first_day: date, last_day: date, campaigns: tuple[str, ...]
) -> pd.DataFrame:
    """funnel_daily for lead days first_day..last_day and the campaigns chosen (none chosen: all)."""
    return source().frame(
        "select lead_day, utm_source, utm_medium, utm_campaign, leads, checkouts, paid_leads, refunded_leads, "
        "revenue_cents, refunded_cents, net_revenue_cents from funnel_daily "
        "where lead_day between ? and ? and (len(?::varchar[]) = 0 or list_contains(?::varchar[], utm_campaign)) "
        "order by lead_day, utm_source, utm_medium, utm_campaign",
        [first_day, last_day, list(campaigns), list(campaigns)],
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def orphan_payments(snapshot_key: str, first_day: date, last_day: date) -> pd.DataFrame:
    """Succeeded payments naming no stored lead, succeeded between first_day and last_day."""
    return source().frame(
        "select payment_intent_id, named_event_id, payment_status, amount_cents, refunded_cents, currency, "
        "succeeded_at from payment_outcomes where is_succeeded and is_orphan "
        "and cast(succeeded_at as date) between ? and ? order by succeeded_at",
        [first_day, last_day],
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def price_mismatches(snapshot_key: str, first_day: date, last_day: date) -> pd.DataFrame:
    """Succeeded payments whose amount or currency is not the product's, succeeded between first_day and last_day."""
    return source().frame(
        "select payment_intent_id, named_event_id, amount_cents, currency, expected_amount_cents, "
        "expected_currency, payment_status, succeeded_at from payment_outcomes "
        "where is_succeeded and is_price_mismatch and cast(succeeded_at as date) between ? and ? "
        "order by succeeded_at",
        [first_day, last_day],
    )


# --- event_id coverage --------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def presence(snapshot_key: str) -> pd.DataFrame:
    """presence_by_system: per system, journeys expected, present and missing, and whether it is enabled."""
    return source().frame(
        "select system, is_enabled, expected, present, missing from presence_by_system order by position"
    )


@dataclass(frozen=True)
class MissingJourneys:
    """Journeys missing somewhere: how many in all, and the first `limit` of them with why."""

    total: int
    rows: pd.DataFrame


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def missing_journeys(
    snapshot_key: str, system: str | None = None, limit: int = MISSING_LIMIT
) -> MissingJourneys:
    """The journeys missing in a system they should reach (one, or any), each with every system it misses and why."""
    frame = source().frame(
        "select journey_id, event_id, missing_in, why, count(*) over () as total_missing from missing_journeys "
        "where $system is null or list_contains(missing_systems, $system) "
        "order by is_orphan desc, journey_id limit $limit",
        {"system": system, "limit": limit},
    )
    total = int(frame["total_missing"].iloc[0]) if len(frame) else 0
    return MissingJourneys(total=total, rows=frame[["journey_id", "event_id", "missing_in", "why"]])


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def missing_by_cause(snapshot_key: str) -> pd.DataFrame:
    """Per system, how many journeys miss it, by the state of their delivery (or the Stripe / orphan cause)."""
    return source().frame(
        "select system, cause, count(*) as journeys from journey_gaps group by all order by system, journeys desc"
    )


# --- consent ------------------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def consent_decisions(snapshot_key: str) -> pd.DataFrame:
    """Consent decisions by method, notice version and where they were made."""
    return source().frame(
        "select consent_method, consent_version, is_consent_version_current, consent_source, "
        "count(*) as decisions, count(*) filter (where marketing_consent) as marketing_granted, "
        "count(*) filter (where analytics_consent) as analytics_granted "
        "from stg_consent_ledger group by all order by decisions desc"
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def withdrawals(snapshot_key: str) -> pd.DataFrame:
    """Per day, decisions that took back a consent the same session had given (marketing, analytics)."""
    return source().frame(
        """
        with ordered as (
            select
                recorded_at,
                marketing_consent,
                analytics_consent,
                lag(marketing_consent) over session as previous_marketing,
                lag(analytics_consent) over session as previous_analytics
            from stg_consent_ledger
            window session as (partition by user_session_id order by recorded_at, consent_id)
        )
        select
            cast(recorded_at as date) as day,
            count(*) filter (where previous_marketing and not marketing_consent) as marketing_withdrawn,
            count(*) filter (where previous_analytics and not analytics_consent) as analytics_withdrawn
        from ordered
        where (previous_marketing and not marketing_consent) or (previous_analytics and not analytics_consent)
        group by all
        order by day
        """
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def deliveries_without_consent(snapshot_key: str) -> pd.DataFrame:
    """Delivered MailerLite / sGTM / Meta deliveries made while the consent they need was not in force."""
    return source().frame(
        "select delivery_id, event_id, destination, kind, created_at, delivered_at, consent_decision_at, "
        "marketing_at_completion, analytics_at_completion from delivery_consent "
        "where not made_with_consent order by delivered_at"
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def suppressed_deliveries(snapshot_key: str) -> pd.DataFrame:
    """Deliveries the consent gate held back, by destination and reason."""
    return source().frame(
        "select destination, kind, coalesce(reason, '(none)') as reason, count(*) as deliveries "
        "from stg_deliveries where delivery_status = ? group by all order by deliveries desc",
        [DeliveryStatus.SUPPRESSED],
    )


# --- deliveries ---------------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def delivery_status(snapshot_key: str) -> pd.DataFrame:
    """Deliveries per destination and status."""
    return source().frame(
        "select destination, delivery_status as status, count(*) as deliveries "
        "from stg_deliveries group by all order by destination, status"
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def failed_stripe_events(snapshot_key: str, limit: int = DEAD_LETTER_LIMIT) -> pd.DataFrame:
    """Stripe events whose processing failed and never later succeeded (failed or rejected), newest first."""
    return source().frame(
        "select processing_status, event_type, stripe_event_id, object_id, processing_error, "
        "processing_attempts, received_at from stg_stripe_events where is_failed "
        "order by received_at desc limit ?",
        [limit],
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def dead_letters(
    snapshot_key: str,
    destination: Destination | None,
    error: str | None,
    since: date | None,
    until: date | None,
    limit: int = DEAD_LETTER_LIMIT,
) -> pd.DataFrame:
    """Dead deliveries matching the filter, newest first (the same filter a replay by filter applies)."""
    wanted = dead_letter_filter(destination, error, since, until)
    found = source().run(lambda cursor: list_deliveries(cursor, wanted, limit))
    columns = [
        "destination",
        "kind",
        "last_error",
        "attempt_count",
        "created_at",
        "updated_at",
        "reason",
        "event_id",
        "delivery_id",
    ]
    return plain(
        pd.DataFrame(
            [{name: getattr(item, name) for name in columns} for item in found.deliveries], columns=columns
        )
    )


def dead_letter_filter(
    destination: Destination | None, error: str | None, since: date | None, until: date | None
) -> DeliveryFilter:
    """The delivery filter of the dead-letter view: dead, optionally one destination, error text, created days."""
    return DeliveryFilter.model_validate(
        {
            "status": DeliveryStatus.DEAD,
            "destination": destination,
            "error": error or None,
            "since": datetime.combine(since, datetime.min.time()) if since else None,
            "until": datetime.combine(until + timedelta(days=1), datetime.min.time()) if until else None,
        }
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def delivery_detail(snapshot_key: str, delivery_id: str) -> DeliveryDetail | None:
    """One delivery with its payload and every attempt made for it."""
    return source().run(lambda cursor: get_delivery(cursor, UUID(delivery_id)))
