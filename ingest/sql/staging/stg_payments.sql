-- Grain: one row per PaymentIntent (payment_intent_id). Amounts in cents; status only moves forward
-- (open < failed < canceled < succeeded < refunded).
with source as (
    select * from payments
),

renamed as (
    select
        payment_intent_id,
        event_id,
        user_session_id,
        amount_cents,
        refunded_cents,
        currency,
        status as payment_status,
        is_orphan as was_orphan_when_processed,
        failure_code,
        source as payment_source,
        created_at,
        updated_at,
        succeeded_at,
        refunded_at,
        last_stripe_event_id
    from source
)

select * from renamed
