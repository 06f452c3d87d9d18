-- Grain: one row per thing a success metric counts (metric, item_id): the day it falls on and whether it is in the
-- metric's numerator. This is where each metric is defined: its denominator is its rows, its numerator the rows
-- in_numerator. The headline models (attribution_accuracy, ...) count all of a metric's rows and
-- success_metrics_daily counts them per day, so a metric's days always add up to its headline figure.
-- Days: payments on the day their success became known, journeys and leads on the lead's capture day (an orphan
-- payment's journey on its payment's), deliveries on the day they were delivered, Stripe events on the day received.
with settings as (
    select * from stg_run_settings
),

payments as (
    select * from payment_outcomes
),

journeys as (
    select * from journey_presence
),

deliveries as (
    select * from delivery_consent
),

events as (
    select * from stg_stripe_events
),

leads as (
    select * from lead_journeys
),

accuracy_items as (
    -- Succeeded payments (refunded later or not) whose lead had analytics consent when the payment succeeded
    -- (every succeeded payment with a lead when REQUIRE_CONSENT=false), counted when their sGTM purchase was
    -- delivered. The numerator counts within the denominator, so a purchase sent for a payment outside it (none
    -- should be) cannot lift the figure.
    select
        'attribution_accuracy' as metric,
        payments.payment_intent_id as item_id,
        cast(payments.success_known_at as date) as day,
        payments.purchase_delivered as in_numerator
    from payments
    cross join settings
    where payments.is_succeeded
        and payments.names_known_lead
        and (payments.analytics_consent_at_success or not settings.require_consent)
),

consistency_items as (
    -- Every journey (see journey_presence for "should reach"), counted when present in every system it should reach.
    select
        'data_consistency' as metric,
        journey_id as item_id,
        journey_day as day,
        is_consistent as in_numerator
    from journeys
),

compliance_items as (
    -- Delivered MailerLite, sGTM and Meta deliveries other than unsubscribes, counted when made with consent in
    -- force.
    select
        'consent_compliance' as metric,
        cast(delivery_id as varchar) as item_id,
        cast(delivered_at as date) as day,
        made_with_consent as in_numerator
    from deliveries
),

resilience_items as (
    -- Stripe events stored, counted when their processing failed for good: still 'failed' (a later success
    -- settles the row) or 'rejected' (a payload that can never be processed).
    select
        'system_resilience' as metric,
        stripe_event_id as item_id,
        cast(received_at as date) as day,
        is_failed as in_numerator
    from events
),

coverage_items as (
    -- Leads, counted when they hold a CRM contact_id.
    select
        'crm_coverage' as metric,
        cast(event_id as varchar) as item_id,
        lead_day as day,
        has_crm_contact as in_numerator
    from leads
),

final as (
    select * from accuracy_items
    union all
    select * from consistency_items
    union all
    select * from compliance_items
    union all
    select * from resilience_items
    union all
    select * from coverage_items
)

select * from final
