-- Grain: one row per consent decision (consent_id) that can take over from a lead's own capture decision: every
-- decision recorded apart from a capture (the consent endpoint: for a session, sometimes naming an event_id),
-- and every capture in a session that holds more than one lead.
-- The consent in force for a journey at a time t is the latest decision recorded at or before t for its
-- user_session_id or naming its event_id. A lead's own capture decision is one of those (recorded under its event_id
-- and session, with the values and time the lead row carries: data test consent_capture_matches_lead), and the
-- others are these rows. So the consent in force is the later of the lead's own decision and the latest of these:
-- a lookup among few rows instead of a join of every delivery against the whole ledger.
with leads as (
    select user_session_id
    from stg_leads
),

shared_sessions as (
    select user_session_id
    from leads
    group by user_session_id
    having count(*) > 1
),

final as (
    select
        consent_id,
        event_id,
        user_session_id,
        recorded_at,
        marketing_consent,
        analytics_consent,
        consent_source = 'lead' as is_capture
    from stg_consent_ledger
    where consent_source <> 'lead' or user_session_id in (select user_session_id from shared_sessions)
)

select * from final
