-- Grain: one row per system, journey and field the system holds differently from us (system, journey_id, field),
-- for journeys the system should hold, holds, and whose records can tell (system_presence).
-- MailerLite (one subscriber per email): the subscriber describes the journey our outbox last wrote to it (the
-- email's newest delivered subscriber upsert), so only that journey is compared, on `event_id` and
-- `payment_status` (ours: pending | paid | refunded, from the lead's status, as the upsert renders it); an older
-- journey of the same email is held and never stale for naming the newer one.
-- Stripe: for each succeeded payment of ours that Stripe holds as succeeded, `amount_cents` and the metadata
-- `event_id` (refunds live on charges and are not compared). The CRM and GA4 exports carry no field to compare.
with presence as (
    select * from system_presence
    where is_verifiable and is_held
),

contacts as (
    select * from stg_lead_contacts
),

deliveries as (
    select * from presence_deliveries
    where is_delivered and destination = 'mailerlite'
),

subscribers as (
    select * from stg_ext_mailerlite_subscribers
),

succeeded_payments as (
    select * from journey_payments
),

stripe_intents as (
    select * from stg_ext_stripe_payment_intents
    where is_succeeded
),

our_payments as (
    select payment_intent_id, event_id from stg_payments
),

last_written as (
    -- Per email: the journey of the newest delivered MailerLite subscriber upsert.
    select
        contacts.email_key,
        arg_max(contacts.event_id, deliveries.delivered_at) as event_id
    from deliveries
    inner join contacts on contacts.event_id = deliveries.event_id
    group by contacts.email_key
),

mailerlite_compared as (
    select
        presence.journey_id,
        presence.event_id,
        cast(last_written.event_id as varchar) as ours_event_id,
        lower(subscribers.named_event_id) as theirs_event_id,
        case contacts.lead_status when 'lead' then 'pending' else contacts.lead_status end as ours_payment_status,
        subscribers.payment_status as theirs_payment_status
    from presence
    inner join contacts on contacts.event_id = presence.event_id
    inner join last_written
        on last_written.email_key = contacts.email_key and last_written.event_id = presence.event_id
    inner join subscribers on subscribers.email_key = contacts.email_key
    where presence.system = 'mailerlite'
),

stripe_compared as (
    select
        presence.journey_id,
        presence.event_id,
        succeeded_payments.payment_intent_id,
        succeeded_payments.amount_cents as ours_amount_cents,
        stripe_intents.amount_cents as theirs_amount_cents,
        cast(our_payments.event_id as varchar) as ours_event_id,
        lower(stripe_intents.named_event_id) as theirs_event_id
    from presence
    inner join succeeded_payments on succeeded_payments.journey_id = presence.journey_id
    inner join stripe_intents on stripe_intents.payment_intent_id = succeeded_payments.payment_intent_id
    inner join our_payments on our_payments.payment_intent_id = succeeded_payments.payment_intent_id
    where presence.system = 'stripe'
),

stale as (
    select 'mailerlite' as system, journey_id, event_id, 'event_id' as field, cast(null as varchar) as payment_intent_id,
        ours_event_id as ours, theirs_event_id as theirs
    from mailerlite_compared
    where ours_event_id is distinct from theirs_event_id
    union all
    select 'mailerlite', journey_id, event_id, 'payment_status', null, ours_payment_status, theirs_payment_status
    from mailerlite_compared
    where ours_payment_status is distinct from theirs_payment_status
    union all
    select 'stripe', journey_id, event_id, 'amount_cents', payment_intent_id,
        cast(ours_amount_cents as varchar), cast(theirs_amount_cents as varchar)
    from stripe_compared
    where ours_amount_cents is distinct from theirs_amount_cents
    union all
    select 'stripe', journey_id, event_id, 'event_id', payment_intent_id, ours_event_id, theirs_event_id
    from stripe_compared
    where ours_event_id is distinct from theirs_event_id
),

final as (
    select * from stale
)

select * from final
