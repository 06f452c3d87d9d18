-- The funnel narrows: refunded <= paid <= checkouts <= leads, and refunds never exceed revenue. Every row
-- returned is a funnel row (or the attribution row) where it does not.
select 'funnel_daily' as model, lead_day, utm_source, utm_medium, utm_campaign
from funnel_daily
where not (refunded_leads <= paid_leads and paid_leads <= checkouts and checkouts <= leads)
    or refunded_cents > revenue_cents
union all
select 'attribution_by_utm', null, utm_source, utm_medium, utm_campaign
from attribution_by_utm
where not (refunded_leads <= paid_leads and paid_leads <= leads) or refunded_cents > revenue_cents
