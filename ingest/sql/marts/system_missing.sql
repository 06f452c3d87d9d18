-- Grain: one row per system and journey it should hold by our records but whose own records do not
-- (system, journey_id), with why: for MailerLite, the CRM and GA4 the newest outbox delivery that would have put it
-- there (delivered means the system answered 2xx and then did not keep it); for Stripe, what Stripe holds for the
-- journey's payments. Only systems with records, and journeys inside the pull's window (system_presence).
with presence as (
    select * from system_presence
    where is_verifiable and not is_held
),

deliveries as (
    select * from presence_deliveries
),

succeeded_payments as (
    select * from journey_payments
),

stripe_intents as (
    select * from stg_ext_stripe_payment_intents
),

latest_deliveries as (
    select
        deliveries.event_id,
        case deliveries.destination when 'sgtm' then 'ga4' else deliveries.destination end as system,
        arg_max(
            {'delivery_id': deliveries.delivery_id,
             'status': deliveries.delivery_status,
             'attempts': deliveries.attempt_count,
             'delivered_at': deliveries.delivered_at,
             'detail': coalesce(nullif(deliveries.last_error, ''), nullif(deliveries.reason, ''))},
            deliveries.created_at
        ) as delivery
    from deliveries
    where deliveries.event_id in (select event_id from presence where not is_orphan)
    group by deliveries.event_id, deliveries.destination
),

stripe_holds as (
    select
        succeeded_payments.journey_id,
        string_agg(
            succeeded_payments.payment_intent_id || ' '
            || coalesce('is ' || stripe_intents.stripe_status, 'is not listed'),
            ', ' order by succeeded_payments.payment_intent_id
        ) as what_stripe_holds
    from succeeded_payments
    left join stripe_intents on stripe_intents.payment_intent_id = succeeded_payments.payment_intent_id
    where succeeded_payments.journey_id in (select journey_id from presence where system = 'stripe')
    group by succeeded_payments.journey_id
),

final as (
    select
        presence.system,
        presence.journey_id,
        presence.event_id,
        presence.is_orphan,
        latest.delivery.delivery_id,
        latest.delivery.status as delivery_status,
        case
            when presence.system = 'stripe' then 'no succeeded PaymentIntent in Stripe'
            when latest.delivery.status is null then 'no delivery queued'
            when latest.delivery.status = 'delivered' then 'lost after delivery'
            else latest.delivery.status
        end as cause,
        case
            when presence.system = 'stripe'
                then 'no succeeded PaymentIntent in Stripe: ' || coalesce(stripe.what_stripe_holds, 'no payment')
            when latest.delivery.status is null then 'no delivery queued'
            when latest.delivery.status = 'delivered'
                then 'delivered ' || strftime(latest.delivery.delivered_at, '%Y-%m-%d %H:%M:%S')
                    || ' UTC (answered 2xx), but not in its records'
            else latest.delivery.status
                || case
                    when latest.delivery.attempts > 0
                        then ' after ' || latest.delivery.attempts || ' attempt'
                            || case when latest.delivery.attempts = 1 then '' else 's' end
                    else ''
                end
                || coalesce(' (' || latest.delivery.detail || ')', '')
        end as reason
    from presence
    left join latest_deliveries as latest
        on latest.event_id = presence.event_id and latest.system = presence.system and not presence.is_orphan
    left join stripe_holds as stripe on stripe.journey_id = presence.journey_id and presence.system = 'stripe'
)

select * from final
