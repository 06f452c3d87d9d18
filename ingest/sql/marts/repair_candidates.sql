-- Grain: one row per delivery a repair would queue (system, journey_id, transaction_id): a journey MailerLite, the
-- CRM or GA4 misses or holds stale by its own records (system_missing, system_stale), to be re-sent through the
-- outbox as a fresh delivery. GA4: one purchase per succeeded payment of the journey that is due (analytics
-- consent when it succeeded, or the gate off) and not in the export. Stripe is not ours to write (checkout creates
-- its records) and an orphan payment has no lead to send, so neither appears here; whether the consent in force
-- now allows the send is decided when the repair runs, and again when the delivery is sent.
with settings as (
    select * from stg_run_settings
),

leads as (
    select event_id, user_session_id from stg_leads
),

missing as (
    select * from system_missing
    where system in ('mailerlite', 'crm', 'ga4') and not is_orphan
),

stale as (
    select system, journey_id, event_id, string_agg(field, ', ' order by field) as fields
    from system_stale
    where system in ('mailerlite', 'crm', 'ga4')
    group by system, journey_id, event_id
),

ga4_due as (
    select
        succeeded.journey_id,
        succeeded.payment_intent_id,
        payments.amount_cents,
        payments.currency
    from journey_payments as succeeded
    inner join payment_outcomes as payments on payments.payment_intent_id = succeeded.payment_intent_id
    cross join settings
    where (payments.analytics_consent_at_success or not settings.require_consent)
        and succeeded.payment_intent_id not in (select transaction_id from stg_ext_ga4_purchases)
),

candidates as (
    select
        system,
        journey_id,
        event_id,
        'missing' as why,
        cast(null as varchar) as transaction_id,
        cast(null as bigint) as amount_cents,
        cast(null as varchar) as currency
    from missing
    where system in ('mailerlite', 'crm')
    union all
    select
        'ga4',
        missing.journey_id,
        missing.event_id,
        'missing',
        ga4_due.payment_intent_id,
        ga4_due.amount_cents,
        ga4_due.currency
    from missing
    inner join ga4_due on ga4_due.journey_id = missing.journey_id
    where missing.system = 'ga4'
    union all
    select system, journey_id, event_id, 'stale ' || fields, null, null, null
    from stale
),

final as (
    select candidates.*, leads.user_session_id
    from candidates
    inner join leads on leads.event_id = candidates.event_id
)

select * from final
