-- Grain: one row per PaymentIntent (payment_intent_id): whether it succeeded (refunded later or not), the stored
-- lead it names (none: an orphan), the analytics and marketing consent in force when its success became known, and
-- whether its sGTM purchase and its Meta Purchase were delivered. Its success became known when it was processed as succeeded or, for a refund that
-- arrived before the payment it refunds, as refunded: that is when the purchase was planned, so the consent that
-- decided it. Consent in force: see consent_overrides.
with payments as (
    select * from stg_payments
),

leads as (
    select event_id, user_session_id, captured_consent_at, captured_analytics_consent, captured_marketing_consent
    from stg_leads
),

overrides as (
    select * from consent_overrides
),

delivered_purchases as (
    select distinct transaction_id as payment_intent_id
    from presence_deliveries
    where is_delivered and destination = 'sgtm'
),

delivered_meta_purchases as (
    select distinct transaction_id as payment_intent_id
    from presence_deliveries
    where is_delivered and destination = 'meta'
),

stored_events as (
    select stripe_event_id
    from stg_stripe_events
),

named as (
    select
        payments.*,
        payments.payment_status in ('succeeded', 'refunded') as is_succeeded,
        least(payments.succeeded_at, payments.refunded_at) as success_known_at,
        leads.event_id is not null as names_known_lead,
        leads.user_session_id as lead_session_id,
        leads.captured_consent_at,
        leads.captured_analytics_consent,
        leads.captured_marketing_consent
    from payments
    left join leads on leads.event_id = payments.event_id
),

overrides_until_success as (
    select named.payment_intent_id, overrides.recorded_at, overrides.analytics_consent, overrides.marketing_consent
    from named
    inner join overrides
        on overrides.user_session_id = named.lead_session_id and overrides.recorded_at <= named.success_known_at
    where named.is_succeeded and named.names_known_lead
    union all
    select named.payment_intent_id, overrides.recorded_at, overrides.analytics_consent, overrides.marketing_consent
    from named
    inner join overrides
        on overrides.event_id = named.event_id and overrides.recorded_at <= named.success_known_at
    where named.is_succeeded and named.names_known_lead
),

latest_override as (
    select
        payment_intent_id,
        arg_max({'at': recorded_at, 'analytics': analytics_consent, 'marketing': marketing_consent}, recorded_at)
            as decision
    from overrides_until_success
    group by payment_intent_id
),

with_consent as (
    -- The consent in force: the lead's own capture decision, unless an override was recorded after it (and
    -- before the success became known), or the capture came after (then only an override can be in force).
    select
        named.*,
        named.names_known_lead and case
            when named.captured_consent_at <= named.success_known_at
                and not coalesce(latest_override.decision.at > named.captured_consent_at, false)
                then named.captured_analytics_consent
            else coalesce(latest_override.decision.analytics, false)
        end as analytics_consent_at_success,
        named.names_known_lead and case
            when named.captured_consent_at <= named.success_known_at
                and not coalesce(latest_override.decision.at > named.captured_consent_at, false)
                then named.captured_marketing_consent
            else coalesce(latest_override.decision.marketing, false)
        end as marketing_consent_at_success
    from named
    left join latest_override on latest_override.payment_intent_id = named.payment_intent_id
),

final as (
    select
        payment.payment_intent_id,
        case when payment.names_known_lead then payment.event_id end as event_id,
        payment.event_id as named_event_id,
        payment.payment_status,
        payment.is_succeeded,
        payment.payment_status = 'refunded' as is_refunded,
        payment.names_known_lead,
        not payment.names_known_lead as is_orphan,
        payment.amount_cents,
        payment.refunded_cents,
        payment.currency,
        payment.is_price_mismatch,
        payment.is_succeeded and not payment.is_price_mismatch as is_normal_sale,
        payment.expected_amount_cents,
        payment.expected_currency,
        payment.payment_source,
        payment.created_at,
        payment.succeeded_at,
        payment.success_known_at,
        payment.refunded_at,
        payment.analytics_consent_at_success,
        payment.marketing_consent_at_success,
        delivered_purchases.payment_intent_id is not null as purchase_delivered,
        delivered_meta_purchases.payment_intent_id is not null as meta_purchase_delivered,
        stored_events.stripe_event_id is not null as confirmed_by_stripe_event
    from with_consent as payment
    left join delivered_purchases on delivered_purchases.payment_intent_id = payment.payment_intent_id
    left join delivered_meta_purchases on delivered_meta_purchases.payment_intent_id = payment.payment_intent_id
    left join stored_events on stored_events.stripe_event_id = payment.last_stripe_event_id
)

select * from final
