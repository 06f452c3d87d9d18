-- Grain: one row per lead (event_id): the consent it was captured with, and the consent in force now: the latest
-- ledger decision recorded for its user_session_id or naming its event_id (none recorded: no consent).
-- A lead capture's own decision always carries the lead's session (data test consent_capture_matches_lead), so
-- decisions are looked up by session, plus those recorded apart from capture that name the event_id: the same
-- set as "by event_id or session", without a join of every lead against the ledger twice.
with leads as (
    select event_id, user_session_id, captured_marketing_consent, captured_analytics_consent
    from stg_leads
),

session_latest as (
    select
        user_session_id,
        arg_max({'at': recorded_at, 'marketing': marketing_consent, 'analytics': analytics_consent}, recorded_at)
            as decision
    from stg_consent_ledger
    group by user_session_id
),

event_latest as (
    select
        event_id,
        arg_max({'at': recorded_at, 'marketing': marketing_consent, 'analytics': analytics_consent}, recorded_at)
            as decision
    from stg_consent_ledger
    where consent_source <> 'lead' and event_id is not null
    group by event_id
),

latest as (
    select
        leads.*,
        case
            when event_latest.decision is null then session_latest.decision
            when session_latest.decision is null then event_latest.decision
            when event_latest.decision.at > session_latest.decision.at then event_latest.decision
            else session_latest.decision
        end as decision
    from leads
    left join session_latest on session_latest.user_session_id = leads.user_session_id
    left join event_latest on event_latest.event_id = leads.event_id
),

final as (
    select
        event_id,
        user_session_id,
        captured_marketing_consent,
        captured_analytics_consent,
        coalesce(decision.marketing, false) as marketing_consent_now,
        coalesce(decision.analytics, false) as analytics_consent_now,
        decision.at as consent_recorded_at
    from latest
)

select * from final
