-- A lead capture's consent decision is in the ledger under the lead's event_id, with the lead's session, values
-- and time. The consent models rely on it: they take a lead's own decision from the lead row, and look decisions
-- up by session plus those recorded apart from capture by event_id. Every row returned breaks it.
with leads as (
    select * from stg_leads
),

captures as (
    select * from stg_consent_ledger
    where consent_source = 'lead'
)

select leads.event_id, 'no capture decision in the ledger' as problem
from leads
where leads.event_id not in (select event_id from captures where event_id is not null)
union all
select captures.event_id, 'capture decision differs from its lead' as problem
from captures
inner join leads on leads.event_id = captures.event_id
where captures.user_session_id <> leads.user_session_id
    or captures.recorded_at <> leads.captured_consent_at
    or captures.marketing_consent <> leads.captured_marketing_consent
    or captures.analytics_consent <> leads.captured_analytics_consent
