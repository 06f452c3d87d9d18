-- A success metric counts each thing once, and has one row per day: every row returned is a key that repeats.
select 'success_metric_items' as model, metric || '|' || item_id as key_value, count(*) as rows
from success_metric_items group by metric, item_id having count(*) > 1
union all
select 'success_metrics_daily', metric || '|' || coalesce(cast(day as varchar), '(no day)'), count(*)
from success_metrics_daily group by metric, day having count(*) > 1
