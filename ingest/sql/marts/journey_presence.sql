-- Grain: one row per journey: every lead (journey_id = its event_id) and every succeeded payment that names no
-- stored lead (journey_id = 'orphan:' || payment_intent_id; always missing, since no system can hold its journey).
-- journey_day: the lead's capture day, or the day an orphan payment's success became known.
-- For each system: whether the journey should reach it and whether it is there, from delivery outcomes (see
-- presence_deliveries for which delivery places a journey) and Stripe.
-- Should reach: ingest always; the CRM when lead capture sends to it; MailerLite with marketing consent in force now;
-- Stripe when a payment succeeded; sGTM when a payment succeeded with analytics consent in force at that moment;
-- Meta (its Purchase) when a payment succeeded with marketing consent in force at that moment.
-- Consent conditions hold for everyone when REQUIRE_CONSENT=false; a disabled destination is never "should reach".
with settings as (
    select * from stg_run_settings
),

consent as (
    select * from lead_consent
),

lead_days as (
    select event_id, lead_day
    from lead_journeys
),

delivered_to_crm as (
    select event_id
    from presence_deliveries
    where is_delivered and destination = 'crm'
),

delivered_to_mailerlite as (
    select event_id
    from presence_deliveries
    where is_delivered and destination = 'mailerlite'
),

succeeded_payments as (
    select * from payment_outcomes
    where is_succeeded
),

lead_payments as (
    select
        payments.event_id,
        bool_or(payments.confirmed_by_stripe_event) as in_stripe,
        bool_or(payments.analytics_consent_at_success or not settings.require_consent) as sgtm_purchase_due,
        bool_or(payments.purchase_delivered) as in_sgtm,
        bool_or(payments.marketing_consent_at_success or not settings.require_consent) as meta_purchase_due,
        bool_or(payments.meta_purchase_delivered) as in_meta
    from succeeded_payments as payments
    cross join settings
    where payments.names_known_lead
    group by payments.event_id
),

lead_rows as (
    select
        cast(consent.event_id as varchar) as journey_id,
        consent.event_id,
        cast(null as varchar) as orphan_payment_intent_id,
        false as is_orphan,
        lead_days.lead_day as journey_day,
        true as ingest_expected,
        true as in_ingest,
        settings.crm_enabled and settings.crm_enable_lead_capture as crm_expected,
        consent.event_id in (select event_id from delivered_to_crm) as in_crm,
        settings.mailerlite_enabled and (consent.marketing_consent_now or not settings.require_consent)
            as mailerlite_expected,
        consent.event_id in (select event_id from delivered_to_mailerlite) as in_mailerlite,
        pays.event_id is not null as stripe_expected,
        coalesce(pays.in_stripe, false) as in_stripe,
        settings.sgtm_enabled and coalesce(pays.sgtm_purchase_due, false) as sgtm_expected,
        coalesce(pays.in_sgtm, false) as in_sgtm,
        settings.meta_enabled and coalesce(pays.meta_purchase_due, false) as meta_expected,
        coalesce(pays.in_meta, false) as in_meta
    from consent
    cross join settings
    left join lead_days on lead_days.event_id = consent.event_id
    left join lead_payments as pays on pays.event_id = consent.event_id
),

orphan_rows as (
    select
        'orphan:' || payment_intent_id as journey_id,
        named_event_id as event_id,
        payment_intent_id as orphan_payment_intent_id,
        true as is_orphan,
        cast(success_known_at as date) as journey_day,
        true as ingest_expected,
        false as in_ingest,
        false as crm_expected,
        false as in_crm,
        false as mailerlite_expected,
        false as in_mailerlite,
        true as stripe_expected,
        confirmed_by_stripe_event as in_stripe,
        false as sgtm_expected,
        false as in_sgtm,
        false as meta_expected,
        false as in_meta
    from succeeded_payments
    where is_orphan
),

journeys as (
    select * from lead_rows
    union all
    select * from orphan_rows
),

final as (
    select
        *,
        not is_orphan
            and (in_ingest or not ingest_expected)
            and (in_crm or not crm_expected)
            and (in_mailerlite or not mailerlite_expected)
            and (in_stripe or not stripe_expected)
            and (in_sgtm or not sgtm_expected)
            and (in_meta or not meta_expected) as is_consistent
    from journeys
)

select * from final
