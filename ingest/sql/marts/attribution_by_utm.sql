-- Grain: one row per utm_source x utm_medium x utm_campaign, plus one '(no lead)' row for succeeded payments that
-- name no stored lead, so revenue here adds up to what Stripe took. Conversion = paid leads / leads.
with funnel as (
    select * from funnel_daily
),

orphan_payments as (
    select * from payment_outcomes
    where is_succeeded and is_orphan
),

by_campaign as (
    select
        utm_source,
        utm_medium,
        utm_campaign,
        sum(leads) as leads,
        sum(checkouts) as checkouts,
        sum(paid_leads) as paid_leads,
        sum(refunded_leads) as refunded_leads,
        0 as orphan_payments,
        sum(revenue_cents) as revenue_cents,
        sum(refunded_cents) as refunded_cents,
        sum(net_revenue_cents) as net_revenue_cents
    from funnel
    group by utm_source, utm_medium, utm_campaign
),

unattributed as (
    select
        '(no lead)' as utm_source,
        '(no lead)' as utm_medium,
        '(no lead)' as utm_campaign,
        0 as leads,
        0 as checkouts,
        0 as paid_leads,
        0 as refunded_leads,
        count(*) as orphan_payments,
        coalesce(sum(amount_cents), 0) as revenue_cents,
        coalesce(sum(refunded_cents), 0) as refunded_cents,
        coalesce(sum(amount_cents), 0) - coalesce(sum(refunded_cents), 0) as net_revenue_cents
    from orphan_payments
    having count(*) > 0
),

combined as (
    select * from by_campaign
    union all
    select * from unattributed
),

final as (
    select
        *,
        case when leads > 0 then paid_leads / leads end as conversion_rate,
        case when leads > 0 then net_revenue_cents / leads end as net_revenue_cents_per_lead
    from combined
)

select * from final
