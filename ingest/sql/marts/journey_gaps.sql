-- Grain: one row per journey and system it should reach but is not in (journey_id, system), with why. For a
-- destination: the state of the newest delivery that would put the journey there (see presence_deliveries), or
-- that none was queued; for Stripe: that no stored Stripe event confirms the payment; for ingest: that the payment
-- names no stored lead (an orphan). Per system these rows are presence_by_system's missing; `position` is the
-- system's there. cause is the reason's category (a delivery state, or the Stripe / orphan cause).
with journeys as (
    select * from journey_presence
),

systems as (
    select position, system from presence_by_system
),

gaps as (
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'ingest' as system
    from journeys where ingest_expected and not in_ingest
    union all
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'crm'
    from journeys where crm_expected and not in_crm
    union all
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'mailerlite'
    from journeys where mailerlite_expected and not in_mailerlite
    union all
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'stripe'
    from journeys where stripe_expected and not in_stripe
    union all
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'sgtm'
    from journeys where sgtm_expected and not in_sgtm
    union all
    select journey_id, event_id, is_orphan, orphan_payment_intent_id, 'meta'
    from journeys where meta_expected and not in_meta
),

latest_deliveries as (
    -- Only the journeys missing somewhere are looked up: a few of every delivery.
    select
        deliveries.event_id,
        deliveries.destination,
        arg_max(
            {'delivery_id': deliveries.delivery_id,
             'status': deliveries.delivery_status,
             'attempts': deliveries.attempt_count,
             'detail': coalesce(nullif(deliveries.last_error, ''), nullif(deliveries.reason, ''))},
            deliveries.created_at
        ) as delivery
    from presence_deliveries as deliveries
    where deliveries.event_id in (select event_id from gaps where not is_orphan)
    group by deliveries.event_id, deliveries.destination
),

with_delivery as (
    select
        gaps.*,
        systems.position,
        latest.delivery.delivery_id,
        latest.delivery.status as delivery_status,
        latest.delivery.attempts as attempt_count,
        latest.delivery.detail as delivery_detail
    from gaps
    inner join systems on systems.system = gaps.system
    left join latest_deliveries as latest
        on latest.event_id = gaps.event_id and latest.destination = gaps.system and not gaps.is_orphan
),

final as (
    select
        journey_id,
        event_id,
        is_orphan,
        orphan_payment_intent_id,
        position,
        system,
        delivery_id,
        delivery_status,
        attempt_count,
        case
            when system = 'ingest' then 'orphan payment (no stored lead)'
            when system = 'stripe' then 'not confirmed by a Stripe event'
            else coalesce(delivery_status, 'no delivery queued')
        end as cause,
        case
            when system = 'ingest'
                then 'Stripe payment ' || orphan_payment_intent_id || ' names no stored lead (orphan)'
            when system = 'stripe' then 'payment not confirmed by any stored Stripe event'
            when delivery_status is null then 'no delivery queued'
            else delivery_status
                || case
                    when delivery_status in ('dead', 'retrying', 'pending') and attempt_count > 0
                        then ' after ' || attempt_count || ' attempt'
                            || case when attempt_count = 1 then '' else 's' end
                    else ''
                end
                || coalesce(' (' || delivery_detail || ')', '')
        end as reason
    from with_delivery
)

select * from final
