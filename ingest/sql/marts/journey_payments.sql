-- Grain: one row per journey and succeeded payment (journey_id, payment_intent_id): a lead's succeeded payments
-- under its event_id, an orphan payment under its own journey ('orphan:' || payment_intent_id, as journey_presence).
with payments as (
    select * from payment_outcomes
    where is_succeeded
),

final as (
    select
        cast(event_id as varchar) as journey_id,
        payment_intent_id,
        amount_cents,
        created_at
    from payments
    where names_known_lead
    union all
    select
        'orphan:' || payment_intent_id as journey_id,
        payment_intent_id,
        amount_cents,
        created_at
    from payments
    where is_orphan
)

select * from final
