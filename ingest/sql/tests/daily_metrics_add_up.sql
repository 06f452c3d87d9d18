-- Each success metric's days add up to it: summed over the dated rows of success_metrics_daily (the ones a daily
-- chart can show), numerator and denominator equal the headline metric's. Every row returned is a metric whose days
-- do not (a thing it counts has no day).
with headline as (
    select metric, numerator, denominator from success_metrics
),

days as (
    select metric, sum(numerator) as numerator, sum(denominator) as denominator
    from success_metrics_daily
    where day is not null
    group by metric
)

select
    headline.metric,
    headline.numerator,
    headline.denominator,
    days.numerator as daily_numerator,
    days.denominator as daily_denominator
from headline
left join days on days.metric = headline.metric
where coalesce(days.numerator, 0) <> headline.numerator or coalesce(days.denominator, 0) <> headline.denominator
