-- Grain: one row per system with records of its own (stripe, mailerlite, crm, ga4) and journey that should reach it
-- by our records (system, journey_id): whether that system's own records hold it, and whether they can tell
-- (is_verifiable: the system was pulled or imported, and the journey falls in the pull's window).
-- "Should reach" is journey_presence's (ga4 is sGTM's purchase); in_outbox is its outbox-based presence.
-- Held, as DESIGN.md defines it:
--   mailerlite: a subscriber with the lead's email. MailerLite keeps one subscriber per address, so every journey
--     of one email is held by that one subscriber: a second journey of the same email is held when the email is,
--     never missing for want of a second subscriber. Which journey the subscriber's fields describe is judged in
--     system_stale, against the journey our outbox last wrote to it.
--   crm: an export row with the journey's event_id, or with the contact_id the CRM gave us for the lead.
--   stripe: a succeeded PaymentIntent for one of the journey's succeeded payments (an orphan: its own payment).
--   ga4: a purchase whose transaction_id is one of the journey's succeeded payments.
-- Window: a MailerLite pull --since covers the journeys captured since then, a Stripe pull --since those whose
-- payments were all created since then; an import covers every journey.
with journeys as (
    select * from journey_presence
),

contacts as (
    select * from stg_lead_contacts
),

pulls as (
    select * from stg_ext_pulls
),

succeeded_payments as (
    select * from journey_payments
),

subscribers as (
    select distinct email_key from stg_ext_mailerlite_subscribers
),

crm_event_ids as (
    select distinct named_event_id from stg_ext_crm_contacts
    where named_event_id is not null
),

crm_contact_ids as (
    select distinct contact_id from stg_ext_crm_contacts
    where contact_id is not null
),

stripe_succeeded as (
    select distinct payment_intent_id from stg_ext_stripe_payment_intents
    where is_succeeded
),

ga4_transactions as (
    select distinct transaction_id from stg_ext_ga4_purchases
),

payment_presence as (
    select
        succeeded_payments.journey_id,
        bool_or(stripe_succeeded.payment_intent_id is not null) as in_stripe_records,
        bool_or(ga4_transactions.transaction_id is not null) as in_ga4_records,
        min(succeeded_payments.created_at) as first_payment_at
    from succeeded_payments
    left join stripe_succeeded on stripe_succeeded.payment_intent_id = succeeded_payments.payment_intent_id
    left join ga4_transactions on ga4_transactions.transaction_id = succeeded_payments.payment_intent_id
    group by succeeded_payments.journey_id
),

expected as (
    select
        journeys.journey_id,
        journeys.event_id,
        journeys.is_orphan,
        journeys.mailerlite_expected,
        journeys.in_mailerlite,
        journeys.crm_expected,
        journeys.in_crm,
        journeys.stripe_expected,
        journeys.in_stripe,
        journeys.sgtm_expected,
        journeys.in_sgtm,
        contacts.email_key,
        contacts.crm_contact_id,
        contacts.lead_at,
        coalesce(payment_presence.in_stripe_records, false) as in_stripe_records,
        coalesce(payment_presence.in_ga4_records, false) as in_ga4_records,
        payment_presence.first_payment_at
    from journeys
    left join contacts on contacts.event_id = journeys.event_id and not journeys.is_orphan
    left join payment_presence on payment_presence.journey_id = journeys.journey_id
    where journeys.mailerlite_expected or journeys.crm_expected or journeys.stripe_expected
        or journeys.sgtm_expected
),

per_system as (
    select
        'mailerlite' as system,
        journey_id,
        event_id,
        is_orphan,
        in_mailerlite as in_outbox,
        coalesce(email_key in (select email_key from subscribers), false) as is_held,
        lead_at as window_at
    from expected
    where mailerlite_expected
    union all
    select
        'crm',
        journey_id,
        event_id,
        is_orphan,
        in_crm,
        coalesce(cast(event_id as varchar) in (select named_event_id from crm_event_ids), false)
            or coalesce(crm_contact_id in (select contact_id from crm_contact_ids), false),
        cast(null as timestamp)
    from expected
    where crm_expected
    union all
    select 'stripe', journey_id, event_id, is_orphan, in_stripe, in_stripe_records, first_payment_at
    from expected
    where stripe_expected
    union all
    select 'ga4', journey_id, event_id, is_orphan, in_sgtm, in_ga4_records, cast(null as timestamp)
    from expected
    where sgtm_expected
),

final as (
    select
        per_system.system,
        per_system.journey_id,
        per_system.event_id,
        per_system.is_orphan,
        per_system.in_outbox,
        per_system.is_held,
        pulls.system is not null
            and (pulls.since is null or coalesce(per_system.window_at >= pulls.since, false)) as is_verifiable
    from per_system
    left join pulls on pulls.system = per_system.system
)

select * from final
