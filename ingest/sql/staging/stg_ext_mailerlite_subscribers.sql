-- Grain: one row per MailerLite subscriber at the last pull (email: MailerLite keeps one subscriber per address).
with source as (
    select * from ext_mailerlite_subscribers
),

renamed as (
    select
        subscriber_id,
        lower(trim(email)) as email_key,
        status as subscriber_status,
        nullif(trim(event_id), '') as named_event_id,
        nullif(trim(payment_status), '') as payment_status,
        subscriber_updated_at
    from source
)

select * from renamed
