-- Grain: one row: crm_coverage = leads with a CRM contact_id / leads; defined in success_metric_items. No leads:
-- 100%, met.
with items as (
    select * from success_metric_items
    where metric = 'crm_coverage'
),

counts as (
    select
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator
    from items
),

final as (
    select
        'crm_coverage' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        1.0 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator
    from counts
)

select * from final
