-- Grain: one row per purchase line of the last GA4 export (line); transaction_id is our PaymentIntent's id.
with source as (
    select * from ext_ga4_purchases
),

renamed as (
    select
        line,
        trim(transaction_id) as transaction_id,
        nullif(lower(trim(event_id)), '') as named_event_id
    from source
)

select * from renamed
