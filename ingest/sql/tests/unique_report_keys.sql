-- The funnel and attribution marts have one row per group: every row returned is a group that repeats.
select 'funnel_daily' as model, concat_ws('|', lead_day, utm_source, utm_medium, utm_campaign) as key_value, count(*) as rows
from funnel_daily group by lead_day, utm_source, utm_medium, utm_campaign having count(*) > 1
union all
select 'attribution_by_utm', concat_ws('|', utm_source, utm_medium, utm_campaign), count(*)
from attribution_by_utm group by utm_source, utm_medium, utm_campaign having count(*) > 1
