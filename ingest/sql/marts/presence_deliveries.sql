-- Grain: one row per delivery that, once delivered, puts its journey in the destination it goes to (delivery_id):
-- the CRM contact upsert, the MailerLite subscriber upsert, the sGTM purchase and the Meta Purchase (both for the
-- PaymentIntent named in transaction_id). The other kinds (sGTM generate_lead and refund, Meta's Lead, MailerLite
-- unsubscribe) place no journey.
with deliveries as (
    select * from stg_deliveries
),

final as (
    select
        delivery_id,
        event_id,
        destination,
        kind,
        transaction_id,
        delivery_status,
        delivery_status = 'delivered' as is_delivered,
        reason,
        last_error,
        attempt_count,
        created_at,
        delivered_at
    from deliveries
    where (destination = 'crm' and kind = 'contact_upsert')
        or (destination = 'mailerlite' and kind = 'subscriber_upsert')
        or (destination = 'sgtm' and kind = 'purchase')
        or (destination = 'meta' and kind = 'purchase')
)

select * from final
