-- Grain: one row per consent decision (consent_id), append-only; a decision applies to its event_id and session.
with source as (
    select * from consent_ledger
),

renamed as (
    select
        consent_id,
        event_id,
        user_session_id,
        marketing_consent,
        analytics_consent,
        consent_method,
        consent_version,
        consent_version_current as is_consent_version_current,
        source as consent_source,
        recorded_at
    from source
)

select * from renamed
