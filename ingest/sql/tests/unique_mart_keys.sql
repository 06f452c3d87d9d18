-- Each mart's key is unique at its stated grain: every row returned is a key that repeats.
select 'lead_consent' as model, cast(event_id as varchar) as key_value, count(*) as rows
from lead_consent group by event_id having count(*) > 1
union all
select 'delivery_consent', cast(delivery_id as varchar), count(*)
from delivery_consent group by delivery_id having count(*) > 1
union all
select 'payment_outcomes', payment_intent_id, count(*)
from payment_outcomes group by payment_intent_id having count(*) > 1
union all
select 'lead_journeys', cast(event_id as varchar), count(*)
from lead_journeys group by event_id having count(*) > 1
union all
select 'journey_presence', journey_id, count(*)
from journey_presence group by journey_id having count(*) > 1
union all
select 'journey_gaps', journey_id || '|' || system, count(*)
from journey_gaps group by journey_id, system having count(*) > 1
union all
select 'presence_deliveries', cast(delivery_id as varchar), count(*)
from presence_deliveries group by delivery_id having count(*) > 1
union all
select 'missing_journeys', journey_id, count(*)
from missing_journeys group by journey_id having count(*) > 1
