-- Foundation schema: leads, the append-only consent ledger, the delivery outbox with its attempts,
-- and raw Stripe events. All *_at columns are UTC timestamps.

create table leads (
    event_id uuid primary key,
    user_session_id uuid not null,
    full_name varchar not null,
    email varchar not null,
    phone varchar,
    utm_source varchar,
    utm_medium varchar,
    utm_campaign varchar,
    utm_content varchar,
    utm_term varchar,
    landing_page varchar,
    referrer varchar,
    ga_client_id varchar,
    lead_created_at timestamp,
    checkout_started_at timestamp,
    marketing_consent boolean not null,
    analytics_consent boolean not null,
    consent_method varchar not null,
    consent_version varchar not null,
    consent_version_current boolean not null,
    consent_at timestamp not null,
    consent_ip varchar,
    consent_user_agent varchar,
    status varchar not null default 'lead',
    crm_contact_id varchar,
    mailerlite_subscriber_id varchar,
    payment_intent_id varchar,
    received_at timestamp not null,
    updated_at timestamp not null
);

create table consent_ledger (
    consent_id uuid not null,
    user_session_id uuid not null,
    event_id uuid,
    marketing_consent boolean not null,
    analytics_consent boolean not null,
    consent_method varchar not null,
    consent_version varchar not null,
    consent_version_current boolean not null,
    source varchar not null,
    recorded_at timestamp not null,
    ip varchar,
    user_agent varchar
);

create table deliveries (
    delivery_id uuid primary key,
    event_id uuid,
    user_session_id uuid,
    destination varchar not null,
    kind varchar not null,
    purpose varchar not null,
    idempotency_key varchar not null unique,
    payload json,
    status varchar not null,
    reason varchar,
    attempt_count integer not null default 0,
    next_attempt_at timestamp,
    last_error varchar,
    created_at timestamp not null,
    updated_at timestamp not null,
    delivered_at timestamp
);

create table delivery_attempts (
    delivery_id uuid not null,
    attempt_number integer not null,
    started_at timestamp not null,
    duration_ms double,
    status_code integer,
    response_body varchar,
    error varchar,
    outcome varchar not null
);

create table stripe_events (
    stripe_event_id varchar primary key,
    event_type varchar not null,
    object_id varchar,
    stripe_created_at timestamp,
    received_at timestamp not null,
    source varchar not null,
    payload json not null,
    status varchar not null,
    error varchar,
    processing_attempts integer not null default 0,
    processed_at timestamp
);

create table service_heartbeat (
    id integer primary key,
    beat_at timestamp not null
);
