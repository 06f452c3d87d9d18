"""The dashboard's queries: cached, parameterised selects from the models of ingest/sql/ over the replica.

One `ReplicaSource` (`dashboard.snapshots`) per replica path lives for the whole Streamlit server
(`st.cache_resource`). Results are cached with `st.cache_data`, keyed by the copy they were read from, so two
sessions looking at the same copy query it once.

All SQL here reads the models of ingest/sql/, or the outbox tables for what the models leave out (last errors,
payloads); every value comes in as a parameter.
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
from ingest.outbox.replay import DeliveryDetail, DeliveryFilter, get_delivery, list_deliveries
from ingest.reconcile.models import Metric, success_metrics

CACHE_SECONDS = 600  # a bound on memory; a new replica changes the key long before
CACHE_ENTRIES = 64
MISSING_LIMIT = 500
DEAD_LETTER_LIMIT = 200
DESTINATIONS = ("mailerlite", "crm", "sgtm")
SYSTEMS = ("ingest", "crm", "mailerlite", "stripe", "sgtm")


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


_DAILY_METRICS_SQL = """
with settings as (
    select * from stg_run_settings
),

lead_days as (
    select event_id, cast(coalesce(lead_created_at, received_at) as date) as day, crm_contact_id
    from stg_leads
),

accuracy as (
    select cast(payments.succeeded_at as date) as day, 'attribution_accuracy' as metric,
        count(*) filter (where payments.purchase_delivered) as numerator, count(*) as denominator
    from payment_outcomes as payments
    cross join settings
    where payments.is_succeeded and payments.names_known_lead
        and (payments.analytics_consent_at_success or not settings.require_consent)
    group by all
),

consistency as (
    select coalesce(lead_days.day, cast(orphans.succeeded_at as date)) as day, 'data_consistency' as metric,
        count(*) filter (where journeys.is_consistent) as numerator, count(*) as denominator
    from journey_presence as journeys
    left join lead_days on lead_days.event_id = journeys.event_id and not journeys.is_orphan
    left join stg_payments as orphans on orphans.payment_intent_id = journeys.orphan_payment_intent_id
    group by all
),

compliance as (
    select cast(delivered_at as date) as day, 'consent_compliance' as metric,
        count(*) filter (where made_with_consent) as numerator, count(*) as denominator
    from delivery_consent
    group by all
),

resilience as (
    select cast(received_at as date) as day, 'system_resilience' as metric,
        count(*) filter (where processing_status = 'failed') as numerator, count(*) as denominator
    from stg_stripe_events
    group by all
),

coverage as (
    select day, 'crm_coverage' as metric,
        count(*) filter (where crm_contact_id is not null) as numerator, count(*) as denominator
    from lead_days
    group by all
),

final as (
    select * from accuracy
    union all select * from consistency
    union all select * from compliance
    union all select * from resilience
    union all select * from coverage
)

select day, metric, numerator, denominator, numerator / nullif(denominator, 0) as value
from final
where day is not null
order by day, metric
"""


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def daily_metrics(snapshot_key: str) -> pd.DataFrame:
    """Each metric's numerator, denominator and value per day (of capture, payment, delivery or receipt)."""
    return source().frame(_DAILY_METRICS_SQL)


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


# --- event_id coverage --------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def presence(snapshot_key: str) -> pd.DataFrame:
    """presence_by_system: per system, journeys expected, present and missing, and whether it is enabled."""
    return source().frame(
        "select system, is_enabled, expected, present, missing from presence_by_system order by position"
    )


_MISSING_SQL = """
with gaps as (
    select *
    from journey_presence
    where not is_consistent
        and (
            $system is null
            or ($system = 'crm' and crm_expected and not in_crm)
            or ($system = 'mailerlite' and mailerlite_expected and not in_mailerlite)
            or ($system = 'stripe' and stripe_expected and not in_stripe)
            or ($system = 'sgtm' and sgtm_expected and not in_sgtm)
            or ($system = 'ingest' and ingest_expected and not in_ingest)
        )
),

counted as (
    select count(*) as total from gaps
),

shown as (
    select * from gaps order by is_orphan desc, journey_id limit $limit
),

latest as (
    -- The newest delivery of each (journey, destination) kind that makes a journey present there.
    select
        deliveries.event_id,
        deliveries.destination,
        arg_max(
            {'status': deliveries.status, 'reason': deliveries.reason, 'error': deliveries.last_error,
             'attempts': deliveries.attempt_count, 'delivery_id': deliveries.delivery_id},
            deliveries.created_at
        ) as delivery
    from deliveries
    where deliveries.event_id in (select event_id from shown where event_id is not null)
        and ((deliveries.destination = 'crm' and deliveries.kind = 'contact_upsert')
            or (deliveries.destination = 'mailerlite' and deliveries.kind = 'subscriber_upsert')
            or (deliveries.destination = 'sgtm' and deliveries.kind = 'purchase'))
    group by all
)

select
    shown.journey_id,
    shown.event_id,
    shown.is_orphan,
    shown.orphan_payment_intent_id,
    concat_ws(
        ', ',
        case when shown.crm_expected and not shown.in_crm then 'crm' end,
        case when shown.mailerlite_expected and not shown.in_mailerlite then 'mailerlite' end,
        case when shown.stripe_expected and not shown.in_stripe then 'stripe' end,
        case when shown.sgtm_expected and not shown.in_sgtm then 'sgtm' end,
        case when shown.ingest_expected and not shown.in_ingest then 'ingest' end
    ) as missing_in,
    crm.delivery as crm_delivery,
    mailerlite.delivery as mailerlite_delivery,
    sgtm.delivery as sgtm_delivery,
    (select total from counted) as total_missing
from shown
left join latest as crm on crm.event_id = shown.event_id and crm.destination = 'crm'
left join latest as mailerlite on mailerlite.event_id = shown.event_id and mailerlite.destination = 'mailerlite'
left join latest as sgtm on sgtm.event_id = shown.event_id and sgtm.destination = 'sgtm'
order by shown.is_orphan desc, shown.journey_id
"""


def _delivery_reason(system: str, delivery: Any) -> str:
    if delivery is None or (isinstance(delivery, float) and pd.isna(delivery)):
        return f"{system}: no delivery queued"
    status = delivery["status"]
    detail = delivery["error"] or delivery["reason"]
    attempts = delivery["attempts"]
    text = f"{system}: {status}"
    if status in ("dead", "retrying", "pending") and attempts:
        text += f" after {attempts} attempt{'s' if attempts != 1 else ''}"
    return f"{text} ({detail})" if detail else text


def explain_missing(row: pd.Series) -> str:
    """Why one journey is missing where it should be, one clause per system."""
    if row["is_orphan"]:
        return f"Stripe payment {row['orphan_payment_intent_id']} names no stored lead (orphan)"
    reasons = []
    for system in str(row["missing_in"]).split(", "):
        if system == "stripe":
            reasons.append("stripe: payment not confirmed by any stored Stripe event")
        elif system == "ingest":
            reasons.append("ingest: no stored lead")
        else:
            reasons.append(_delivery_reason(system, row[f"{system}_delivery"]))
    return "; ".join(reasons)


@dataclass(frozen=True)
class MissingJourneys:
    """Journeys missing somewhere: how many in all, and the first `limit` of them with why."""

    total: int
    rows: pd.DataFrame


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def missing_journeys(
    snapshot_key: str, system: str | None = None, limit: int = MISSING_LIMIT
) -> MissingJourneys:
    """The event_ids (and orphan payments) missing in a system they should reach (one, or any), with why."""
    frame = source().frame(_MISSING_SQL, {"system": system, "limit": limit})
    total = int(frame["total_missing"].iloc[0]) if len(frame) else 0
    if frame.empty:
        rows = pd.DataFrame(columns=["journey_id", "event_id", "missing_in", "why"])
    else:
        frame["why"] = frame.apply(explain_missing, axis=1)
        rows = frame[["journey_id", "event_id", "missing_in", "why"]]
    return MissingJourneys(total=total, rows=rows)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def missing_by_cause(snapshot_key: str) -> pd.DataFrame:
    """Per system, how many journeys miss it, by the state of their delivery (or the Stripe / orphan cause)."""
    return source().frame(
        """
        with gaps as (
            select * from journey_presence where not is_consistent
        ),
        per_system as (
            select 'crm' as system, event_id, 'contact_upsert' as kind from gaps where crm_expected and not in_crm
            union all
            select 'mailerlite', event_id, 'subscriber_upsert' from gaps
                where mailerlite_expected and not in_mailerlite
            union all
            select 'sgtm', event_id, 'purchase' from gaps where sgtm_expected and not in_sgtm
        ),
        states as (
            select deliveries.event_id, deliveries.destination, deliveries.kind,
                arg_max(deliveries.status, deliveries.created_at) as status
            from deliveries
            where deliveries.event_id in (select event_id from per_system)
            group by all
        ),
        causes as (
            select per_system.system, coalesce(states.status, 'no delivery queued') as cause
            from per_system
            left join states on states.event_id = per_system.event_id
                and states.destination = per_system.system and states.kind = per_system.kind
            union all
            select 'stripe', 'not confirmed by a Stripe event' from gaps
                where stripe_expected and not in_stripe and not is_orphan
            union all
            select 'ingest', 'orphan payment (no stored lead)' from gaps where is_orphan
        )
        select system, cause, count(*) as journeys from causes group by all order by system, journeys desc
        """
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
    """Delivered MailerLite / sGTM deliveries made while the consent they need was not in force."""
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
        "from stg_deliveries where delivery_status = 'suppressed' group by all order by deliveries desc"
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
def dead_letters(
    snapshot_key: str,
    destination: str | None,
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
    destination: str | None, error: str | None, since: date | None, until: date | None
) -> DeliveryFilter:
    """The delivery filter of the dead-letter view: dead, optionally one destination, error text, created days."""
    return DeliveryFilter.model_validate(
        {
            "status": "dead",
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
