-- Grain: one row per PaymentIntent (payment_intent_id). Amounts in cents, currency lower-case; status only moves
-- forward (open < failed < canceled < succeeded < refunded). is_price_mismatch: succeeded with another amount or
-- currency than the product's (expected_*), kept for review and not a normal sale.
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
        last_stripe_event_id,
        charge_id,
        expected_amount_cents,
        expected_currency,
        is_price_mismatch
    from source
)

select * from renamed
