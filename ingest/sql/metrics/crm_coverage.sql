-- Grain: one row: crm_coverage = leads with a CRM contact_id / leads. No leads: 100%, met.
with leads as (
    select * from stg_leads
),

counts as (
    select
        count(*) filter (where crm_contact_id is not null) as numerator,
        count(*) as denominator
    from leads
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
