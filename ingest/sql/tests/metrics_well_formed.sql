-- Exactly the five metrics, once each, each with 0 <= numerator <= denominator, a value in [0, 1] equal to their ratio, and
-- `met` agreeing with value, comparator and target. Every row returned is a metric that breaks one of these.
with metrics as (
    select * from success_metrics
),

expected as (
    select unnest([
        'attribution_accuracy', 'data_consistency', 'consent_compliance', 'system_resilience', 'crm_coverage'
    ]) as metric
)

select metric, 'missing' as problem from expected where metric not in (select metric from metrics)
union all
select metric, 'unexpected' from metrics where metric not in (select metric from expected)
union all
select metric, 'repeated' from metrics group by metric having count(*) > 1
union all
select metric, 'numerator outside 0..denominator' from metrics
where numerator < 0 or numerator > denominator
union all
select metric, 'value is not numerator / denominator' from metrics
where denominator > 0 and abs(value - numerator / denominator) > 1e-12
union all
select metric, 'value outside 0..1' from metrics where value < 0 or value > 1 or value is null
union all
select metric, 'met disagrees with its target' from metrics
where met is null
    or met <> case comparator when '>=' then value >= target when '<' then value < target end
