-- Grain: one row per PaymentIntent Stripe listed at the last pull (payment_intent_id). A refunded PaymentIntent
-- stays 'succeeded' in Stripe (the refund is on its charge), so refunds are not compared.
with source as (
    select * from ext_stripe_payment_intents
),

renamed as (
    select
        payment_intent_id,
        status as stripe_status,
        status = 'succeeded' as is_succeeded,
        amount_cents,
        currency,
        nullif(trim(event_id), '') as named_event_id,
        stripe_created_at
    from source
)

select * from renamed
