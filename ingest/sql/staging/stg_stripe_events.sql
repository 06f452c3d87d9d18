-- Grain: one row per Stripe event stored (stripe_event_id), whatever its type; the raw payload stays out.
with source as (
    select * from stripe_events
),

renamed as (
    select
        stripe_event_id,
        event_type,
        object_id,
        stripe_created_at,
        received_at,
        source as event_source,
        status as processing_status,
        error as processing_error,
        processing_attempts,
        processed_at,
        change_key,
        duplicate_of
    from source
)

select * from renamed
