-- Grain: one row per lead (event_id): the keys another system files the lead under, for matching its records only
-- (the email as MailerLite files it: trimmed, lower-cased; the CRM contact_id we learned). No mart selects the
-- email itself: they join on it and carry event_ids.
with source as (
    select * from leads
),

renamed as (
    select
        event_id,
        lower(trim(email)) as email_key,
        crm_contact_id,
        status as lead_status,
        coalesce(lead_created_at, received_at) as lead_at
    from source
)

select * from renamed
