-- Grain: one row per lead day x utm_source x utm_medium x utm_campaign: the funnel of the leads captured that day
-- (leads -> checkout -> paid -> refunded) and their revenue, whenever it was paid.
with journeys as (
    select * from lead_journeys
),

final as (
    select
        lead_day,
        utm_source,
        utm_medium,
        utm_campaign,
        count(*) as leads,
        count(*) filter (where reached_checkout) as checkouts,
        count(*) filter (where is_paid) as paid_leads,
        count(*) filter (where is_refunded) as refunded_leads,
        sum(revenue_cents) as revenue_cents,
        sum(refunded_cents) as refunded_cents,
        sum(net_revenue_cents) as net_revenue_cents
    from journeys
    group by lead_day, utm_source, utm_medium, utm_campaign
)

select * from final
