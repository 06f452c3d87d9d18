-- Grain: one row per refunded charge that no stored payment holds (charge_id): a refund whose charge names no
-- PaymentIntent and that no payment's latest_charge matches. Kept apart for review, never counted as a payment.
with source as (
    select * from unlinked_refunds
),

renamed as (
    select
        charge_id,
        event_id as named_event_id,
        amount_cents,
        refunded_cents,
        currency,
        first_seen_at,
        updated_at,
        last_stripe_event_id
    from source
)

select * from renamed
