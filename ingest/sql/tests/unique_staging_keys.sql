-- Each staging model's key is unique at its stated grain: every row returned is a key that repeats.
select 'stg_leads' as model, cast(event_id as varchar) as key_value, count(*) as rows
from stg_leads group by event_id having count(*) > 1
union all
select 'stg_consent_ledger', cast(consent_id as varchar), count(*)
from stg_consent_ledger group by consent_id having count(*) > 1
union all
select 'stg_deliveries', cast(delivery_id as varchar), count(*)
from stg_deliveries group by delivery_id having count(*) > 1
union all
select 'stg_deliveries (idempotency_key)', idempotency_key, count(*)
from stg_deliveries group by idempotency_key having count(*) > 1
union all
select 'stg_delivery_attempts', cast(delivery_id as varchar) || '#' || attempt_number, count(*)
from stg_delivery_attempts group by delivery_id, attempt_number having count(*) > 1
union all
select 'stg_payments', payment_intent_id, count(*)
from stg_payments group by payment_intent_id having count(*) > 1
union all
select 'stg_stripe_events', stripe_event_id, count(*)
from stg_stripe_events group by stripe_event_id having count(*) > 1
union all
select 'stg_unlinked_refunds', charge_id, count(*)
from stg_unlinked_refunds group by charge_id having count(*) > 1
