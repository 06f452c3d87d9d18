-- PostgreSQL twin of ../001_initial.sql: the same tables and columns in PostgreSQL types (text, jsonb,
-- double precision; a Stripe event's payload stays text, as it came); timestamps stay naive UTC.
-- Foundation schema: leads, the append-only consent ledger, the delivery outbox with its attempts,
-- and raw Stripe events. All *_at columns are UTC timestamps.

create table leads (
    event_id uuid primary key,
    user_session_id uuid not null,
    full_name text not null,
    email text not null,
    phone text,
    utm_source text,
    utm_medium text,
    utm_campaign text,
    utm_content text,
    utm_term text,
    landing_page text,
    referrer text,
    ga_client_id text,
    lead_created_at timestamp,
    checkout_started_at timestamp,
    marketing_consent boolean not null,
    analytics_consent boolean not null,
    consent_method text not null,
    consent_version text not null,
    consent_version_current boolean not null,
    consent_at timestamp not null,
    consent_ip text,
    consent_user_agent text,
    status text not null default 'lead',
    crm_contact_id text,
    mailerlite_subscriber_id text,
    payment_intent_id text,
    received_at timestamp not null,
    updated_at timestamp not null
);

create table consent_ledger (
    consent_id uuid not null,
    user_session_id uuid not null,
    event_id uuid,
    marketing_consent boolean not null,
    analytics_consent boolean not null,
    consent_method text not null,
    consent_version text not null,
    consent_version_current boolean not null,
    source text not null,
    recorded_at timestamp not null,
    ip text,
    user_agent text
);

create table deliveries (
    delivery_id uuid primary key,
    event_id uuid,
    user_session_id uuid,
    destination text not null,
    kind text not null,
    purpose text not null,
    idempotency_key text not null unique,
    payload jsonb,
    status text not null,
    reason text,
    attempt_count integer not null default 0,
    next_attempt_at timestamp,
    last_error text,
    created_at timestamp not null,
    updated_at timestamp not null,
    delivered_at timestamp
);

create table delivery_attempts (
    delivery_id uuid not null,
    attempt_number integer not null,
    started_at timestamp not null,
    duration_ms double precision,
    status_code integer,
    response_body text,
    error text,
    outcome text not null
);

create table stripe_events (
    stripe_event_id text primary key,
    event_type text not null,
    object_id text,
    stripe_created_at timestamp,
    received_at timestamp not null,
    source text not null,
    payload text not null,  -- the raw body as Stripe sent it (jsonb would reorder keys and refuse \u0000)
    status text not null,
    error text,
    processing_attempts integer not null default 0,
    processed_at timestamp
);

create table service_heartbeat (
    id integer primary key,
    beat_at timestamp not null
);
