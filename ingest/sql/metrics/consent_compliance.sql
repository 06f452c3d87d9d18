-- Grain: one row: consent_compliance = delivered MailerLite and sGTM deliveries (unsubscribes excluded) made while
-- the matching consent (marketing for MailerLite, analytics for sGTM) was in force / all such delivered
-- deliveries; defined in success_metric_items. No such deliveries: 100%, met.
with items as (
    select * from success_metric_items
    where metric = 'consent_compliance'
),

counts as (
    select
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator
    from items
),

final as (
    select
        'consent_compliance' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        1.0 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator
    from counts
)

select * from final
