-- Grain: one row: data_consistency = journeys present in every system they should reach / all journeys, where the
-- journeys are every lead's event_id plus one per succeeded payment that names no stored lead (always missing);
-- defined in success_metric_items (see journey_presence for "should reach"). No journeys: 100%, met.
with items as (
    select * from success_metric_items
    where metric = 'data_consistency'
),

counts as (
    select
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator
    from items
),

final as (
    select
        'data_consistency' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        1.0 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator
    from counts
)

select * from final
