-- Grain: one row per lead (event_id): the consent it was captured with, and the consent in force now: the latest
-- ledger decision recorded for its user_session_id or naming its event_id (see consent_overrides for why that is
-- the later of the lead's own capture decision and the latest override).
with leads as (
    select
        event_id,
        user_session_id,
        captured_marketing_consent,
        captured_analytics_consent,
        {'at': captured_consent_at,
         'marketing': captured_marketing_consent,
         'analytics': captured_analytics_consent} as own_decision
    from stg_leads
),

overrides as (
    select * from consent_overrides
),

latest_by_session as (
    select
        user_session_id,
        arg_max({'at': recorded_at, 'marketing': marketing_consent, 'analytics': analytics_consent}, recorded_at)
            as decision
    from overrides
    group by user_session_id
),

latest_by_event as (
    select
        event_id,
        arg_max({'at': recorded_at, 'marketing': marketing_consent, 'analytics': analytics_consent}, recorded_at)
            as decision
    from overrides
    where event_id is not null
    group by event_id
),

with_session as (
    select
        leads.*,
        case
            when latest_by_session.decision.at > leads.own_decision.at then latest_by_session.decision
            else leads.own_decision
        end as session_decision
    from leads
    left join latest_by_session on latest_by_session.user_session_id = leads.user_session_id
),

latest as (
    select
        with_session.*,
        case
            when latest_by_event.decision.at > with_session.session_decision.at then latest_by_event.decision
            else with_session.session_decision
        end as decision
    from with_session
    left join latest_by_event on latest_by_event.event_id = with_session.event_id
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
