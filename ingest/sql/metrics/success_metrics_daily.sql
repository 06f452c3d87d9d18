-- Grain: one row per day and success metric (day, metric): the numerator and denominator of the things the metric
-- counts that fall on that day (see success_metric_items for each metric's day) and their ratio. A day with none
-- of a metric's items has no row for it. Summed over the days, they are the headline metric's numerator and
-- denominator (tests/daily_metrics_add_up).
with items as (
    select * from success_metric_items
),

final as (
    select
        day,
        metric,
        count(*) filter (where in_numerator) as numerator,
        count(*) as denominator,
        numerator / denominator as value
    from items
    group by day, metric
)

select * from final
