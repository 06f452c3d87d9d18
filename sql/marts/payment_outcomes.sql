-- Grain: one row per PaymentIntent (payment_intent_id): whether it succeeded (refunded later or not), the stored
-- lead it names (none: an orphan), the analytics consent in force when its success became known, and whether its
-- sGTM purchase was delivered. Its success became known when it was processed as succeeded or, for a refund that
-- arrived before the payment it refunds, as refunded: that is when the purchase was planned, so the consent that
-- decided it.
with payments as (
    select * from stg_payments
),

leads as (
    select event_id, user_session_id
    from stg_leads
),

session_decisions as (
    select user_session_id, recorded_at, analytics_consent
    from stg_consent_ledger
),

event_decisions as (
    select event_id, recorded_at, analytics_consent
    from stg_consent_ledger
    where consent_source <> 'lead' and event_id is not null
),

delivered_purchases as (
    select distinct transaction_id as payment_intent_id
    from stg_deliveries
    where destination = 'sgtm' and kind = 'purchase' and delivery_status = 'delivered'
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
        leads.user_session_id as lead_session_id
    from payments
    left join leads on leads.event_id = payments.event_id
),

decisions_until_success as (
    -- A hash join and arg_max rather than an ASOF join: few payments against the whole ledger, and an ASOF join
    -- sorts all of its right side.
    select
        named.payment_intent_id,
        arg_max(
            {'at': decisions.recorded_at, 'analytics': decisions.analytics_consent}, decisions.recorded_at
        ) as decision
    from named
    inner join session_decisions as decisions
        on decisions.user_session_id = named.lead_session_id and decisions.recorded_at <= named.success_known_at
    where named.is_succeeded and named.names_known_lead
    group by named.payment_intent_id
    union all
    select
        named.payment_intent_id,
        arg_max(
            {'at': decisions.recorded_at, 'analytics': decisions.analytics_consent}, decisions.recorded_at
        ) as decision
    from named
    inner join event_decisions as decisions
        on decisions.event_id = named.event_id and decisions.recorded_at <= named.success_known_at
    where named.is_succeeded and named.names_known_lead
    group by named.payment_intent_id
),

consent_at_success as (
    select payment_intent_id, arg_max(decision.analytics, decision.at) as analytics_consent
    from decisions_until_success
    group by payment_intent_id
),

with_consent as (
    select
        named.*,
        coalesce(consent_at_success.analytics_consent, false) as analytics_consent_at_success
    from named
    left join consent_at_success on consent_at_success.payment_intent_id = named.payment_intent_id
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
        payment.payment_source,
        payment.created_at,
        payment.succeeded_at,
        payment.success_known_at,
        payment.refunded_at,
        payment.analytics_consent_at_success,
        delivered_purchases.payment_intent_id is not null as purchase_delivered,
        stored_events.stripe_event_id is not null as confirmed_by_stripe_event
    from with_consent as payment
    left join delivered_purchases on delivered_purchases.payment_intent_id = payment.payment_intent_id
    left join stored_events on stored_events.stripe_event_id = payment.last_stripe_event_id
)

select * from final
