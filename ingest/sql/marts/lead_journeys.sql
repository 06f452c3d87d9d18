-- Grain: one row per lead (event_id): where it came from, how far it got (checkout, paid, refunded) and the
-- money its succeeded payments brought. Missing UTM values read '(none)'.
with leads as (
    select * from stg_leads
),

payments as (
    select * from payment_outcomes
    where names_known_lead
),

payment_totals as (
    select
        event_id,
        count(*) as payments,
        count(*) filter (where is_succeeded) as succeeded_payments,
        count(*) filter (where is_refunded) as refunded_payments,
        coalesce(sum(amount_cents) filter (where is_succeeded), 0) as revenue_cents,
        coalesce(sum(refunded_cents) filter (where is_succeeded), 0) as refunded_cents
    from payments
    group by event_id
),

final as (
    select
        leads.event_id,
        leads.user_session_id,
        coalesce(leads.utm_source, '(none)') as utm_source,
        coalesce(leads.utm_medium, '(none)') as utm_medium,
        coalesce(leads.utm_campaign, '(none)') as utm_campaign,
        coalesce(leads.lead_created_at, leads.received_at) as lead_at,
        cast(coalesce(leads.lead_created_at, leads.received_at) as date) as lead_day,
        leads.lead_status,
        leads.crm_contact_id is not null as has_crm_contact,
        leads.checkout_started_at is not null
            or leads.payment_intent_id is not null
            or coalesce(payment_totals.payments, 0) > 0 as reached_checkout,
        coalesce(payment_totals.succeeded_payments, 0) > 0 as is_paid,
        coalesce(payment_totals.refunded_payments, 0) > 0 as is_refunded,
        coalesce(payment_totals.succeeded_payments, 0) as succeeded_payments,
        coalesce(payment_totals.revenue_cents, 0) as revenue_cents,
        coalesce(payment_totals.refunded_cents, 0) as refunded_cents,
        coalesce(payment_totals.revenue_cents, 0) - coalesce(payment_totals.refunded_cents, 0)
            as net_revenue_cents
    from leads
    left join payment_totals on payment_totals.event_id = leads.event_id
)

select * from final
