-- Grain: one row: system_resilience = distinct Stripe events whose processing failed and never later succeeded
-- (is_failed: still 'failed', as a later success settles the row, or 'rejected', which never can succeed) /
-- distinct Stripe events stored; defined in success_metric_items. No events: 0%, met.
with items as (
    select * from success_metric_items
    where metric = 'system_resilience'
),

counts as (
    select
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator
    from items
),

final as (
    select
        'system_resilience' as metric,
        case when denominator = 0 then 0.0 else numerator / denominator end as value,
        0.01 as target,
        '<' as comparator,
        value < target as met,
        numerator,
        denominator
    from counts
)

select * from final
