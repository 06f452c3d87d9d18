-- Grain: one row per Stripe event stored (stripe_event_id), whatever its type; the raw payload stays out.
-- processing_status: processed | ignored | duplicate | failed (kept, retried on its next delivery) | rejected (it
-- can never be processed: kept with the reason in processing_error and acknowledged, so Stripe stops retrying).
-- is_failed: its processing failed and never later succeeded (failed or rejected), what system_resilience counts.
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
        status in ('failed', 'rejected') as is_failed,
        status = 'rejected' as is_rejected,
        processing_attempts,
        processed_at,
        change_key,
        duplicate_of
    from source
)

select * from renamed
