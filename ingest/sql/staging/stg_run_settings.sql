-- Grain: exactly one row: the configuration the metrics are read under (from the API that wrote the data).
-- `run_settings` is the one input that is not a table of the database: the model loader creates it.
with source as (
    select * from run_settings
),

renamed as (
    select
        require_consent,
        crm_enable_lead_capture,
        mailerlite_enabled,
        crm_enabled,
        sgtm_enabled,
        meta_enabled
    from source
)

select * from renamed
