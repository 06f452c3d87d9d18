-- Grain: one row per success metric, in the order DESIGN.md lists them: value, target, comparator, met,
-- numerator, denominator.
with metrics as (
    select 1 as position, * from attribution_accuracy
    union all
    select 2, * from data_consistency
    union all
    select 3, * from consent_compliance
    union all
    select 4, * from system_resilience
    union all
    select 5, * from crm_coverage
),

final as (
    select
        position,
        metric,
        cast(value as double) as value,
        cast(target as double) as target,
        comparator,
        met,
        numerator,
        denominator
    from metrics
)

select * from final
