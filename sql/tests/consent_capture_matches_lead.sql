-- A lead capture's consent decision carries its lead's session. The consent models rely on it to look decisions
-- up by session (plus decisions recorded apart from capture by event_id). Every row returned breaks it.
select ledger.consent_id, ledger.event_id, ledger.user_session_id, leads.user_session_id as lead_session_id
from stg_consent_ledger as ledger
inner join stg_leads as leads on leads.event_id = ledger.event_id
where ledger.consent_source = 'lead' and ledger.user_session_id <> leads.user_session_id
