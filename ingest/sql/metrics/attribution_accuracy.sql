-- Grain: one row: attribution_accuracy = succeeded payments (refunded later or not) whose sGTM purchase delivery
-- is delivered / succeeded payments whose lead had analytics consent when the payment succeeded (every succeeded
-- payment with a lead when REQUIRE_CONSENT=false); defined in success_metric_items. No payments in scope: 100%, met.
with items as (
    select * from success_metric_items
    where metric = 'attribution_accuracy'
),

counts as (
    select
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator
    from items
),

final as (
    select
        'attribution_accuracy' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        0.95 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator
    from counts
)

select * from final
