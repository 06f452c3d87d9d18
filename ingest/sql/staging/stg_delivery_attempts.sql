-- Grain: one row per delivery attempt (delivery_id, attempt_number): one request made, or tried, to a destination.
with source as (
    select * from delivery_attempts
),

renamed as (
    select
        delivery_id,
        attempt_number,
        started_at,
        duration_ms,
        status_code,
        error as attempt_error,
        outcome as attempt_outcome
    from source
)

select * from renamed
