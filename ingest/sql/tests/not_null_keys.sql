-- Keys and the columns the metrics count by are never null: every row returned names a model and column that is.
select 'stg_leads' as model, 'event_id / user_session_id' as column_name, count(*) as rows
from stg_leads where event_id is null or user_session_id is null having count(*) > 0
union all
select 'stg_deliveries', 'delivery_id / destination / kind / delivery_status', count(*)
from stg_deliveries
where delivery_id is null or destination is null or kind is null or delivery_status is null
having count(*) > 0
union all
select 'stg_payments', 'payment_intent_id / payment_status', count(*)
from stg_payments where payment_intent_id is null or payment_status is null having count(*) > 0
union all
select 'stg_stripe_events', 'stripe_event_id / processing_status', count(*)
from stg_stripe_events where stripe_event_id is null or processing_status is null having count(*) > 0
union all
select 'journey_presence', 'journey_id / is_consistent', count(*)
from journey_presence where journey_id is null or is_consistent is null having count(*) > 0
union all
select 'delivery_consent', 'made_with_consent', count(*)
from delivery_consent where made_with_consent is null having count(*) > 0
union all
select 'payment_outcomes', 'is_succeeded / analytics_consent_at_success / purchase_delivered', count(*)
from payment_outcomes
where is_succeeded is null or analytics_consent_at_success is null or purchase_delivered is null
having count(*) > 0
