-- Grain: one row per line of the last CRM contacts export (line).
with source as (
    select * from ext_crm_contacts
),

renamed as (
    select
        line,
        nullif(trim(contact_id), '') as contact_id,
        nullif(lower(trim(email)), '') as email_key,
        nullif(lower(trim(event_id)), '') as named_event_id
    from source
)

select * from renamed
