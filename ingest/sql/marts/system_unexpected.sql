-- Grain: one row per system and record it holds that we never issued (system, record_key): a record naming an
-- event_id that is no lead of ours, or, in Stripe, a succeeded PaymentIntent we never recorded. entry is what
-- `attribution reconcile` lists: the event_id the record names, else the record's own id ('payment_intent:pi_…',
-- 'transaction:…'). Records naming no event_id are not ours to judge (a MailerLite subscriber from another form, a
-- CRM contact entered by hand) and are left out; so are Stripe PaymentIntents that never succeeded.
with leads as (
    select cast(event_id as varchar) as event_id, crm_contact_id from stg_lead_contacts
),

payments as (
    select payment_intent_id from stg_payments
),

stripe_intents as (
    select * from stg_ext_stripe_payment_intents
),

subscribers as (
    select * from stg_ext_mailerlite_subscribers
),

crm_rows as (
    select * from stg_ext_crm_contacts
),

ga4_rows as (
    select * from stg_ext_ga4_purchases
),

unexpected as (
    select
        'stripe' as system,
        payment_intent_id as record_key,
        lower(named_event_id) as named_event_id,
        coalesce(lower(named_event_id), 'payment_intent:' || payment_intent_id) as entry,
        'succeeded PaymentIntent ' || payment_intent_id || ' we never recorded'
            || case
                when named_event_id is null then ' (it names no event_id)'
                when lower(named_event_id) in (select event_id from leads) then ' (for a lead we hold)'
                else ' (naming an event_id we never issued)'
            end as reason
    from stripe_intents
    where is_succeeded and payment_intent_id not in (select payment_intent_id from payments)
    union all
    select
        'mailerlite',
        coalesce(subscriber_id, 'subscriber without an id'),  -- never the email: marts carry ids
        lower(named_event_id),
        lower(named_event_id),
        'subscriber ' || coalesce(subscriber_id, '?') || ' names an event_id we never issued'
    from subscribers
    where named_event_id is not null and lower(named_event_id) not in (select event_id from leads)
    union all
    select
        'crm',
        'line ' || line,
        named_event_id,
        named_event_id,
        'export line ' || line || coalesce(' (contact ' || contact_id || ')', '')
            || ' names an event_id we never issued'
    from crm_rows
    where named_event_id is not null
        and named_event_id not in (select event_id from leads)
        and coalesce(contact_id not in (select crm_contact_id from leads where crm_contact_id is not null), true)
    union all
    select
        'ga4',
        'line ' || line,
        named_event_id,
        coalesce(named_event_id, 'transaction:' || transaction_id),
        'purchase ' || transaction_id || ' (export line ' || line || ') is no payment of ours'
    from ga4_rows
    where transaction_id not in (select payment_intent_id from payments)
),

final as (
    select distinct system, record_key, named_event_id, entry, reason
    from unexpected
)

select * from final
