-- Grain: one row per lead (event_id). Renames and types only; contact details (name, email, phone) stay out.
with source as (
    select * from leads
),

renamed as (
    select
        event_id,
        user_session_id,
        utm_source,
        utm_medium,
        utm_campaign,
        utm_content,
        utm_term,
        landing_page,
        referrer,
        lead_created_at,
        checkout_started_at,
        received_at,
        marketing_consent as captured_marketing_consent,
        analytics_consent as captured_analytics_consent,
        consent_at as captured_consent_at,
        consent_method,
        consent_version,
        consent_version_current as is_consent_version_current,
        status as lead_status,
        crm_contact_id,
        mailerlite_subscriber_id,
        payment_intent_id
    from source
)

select * from renamed
