-- Grain: one row per delivery (delivery_id): one fact to forward to one destination, in its current state.
-- transaction_id is the PaymentIntent an sGTM purchase or refund, or a Meta Purchase, reports (null for every
-- other kind).
with source as (
    select * from deliveries
),

renamed as (
    select
        delivery_id,
        event_id,
        user_session_id,
        destination,
        kind,
        purpose,
        idempotency_key,
        status as delivery_status,
        reason,
        attempt_count,
        next_attempt_at,
        last_error,
        created_at,
        updated_at,
        delivered_at,
        case
            when destination in ('sgtm', 'meta') and kind in ('purchase', 'refund')
                then json_extract_string(payload, '$.transaction_id')
        end as transaction_id
    from source
)

select * from renamed
