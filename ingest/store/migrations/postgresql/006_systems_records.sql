-- PostgreSQL twin of ../006_systems_records.sql.
-- The systems' own records (DESIGN.md invariant 9): what Stripe and MailerLite list over their APIs and what a CRM
-- or GA4 export holds, each system's latest pull or import replacing its previous one in one transaction (an
-- interrupted pull leaves the previous one in force). All *_at columns are UTC timestamps.

-- One row per system with records: where they came from, as of when, and the window listed.
create table ext_pulls (
    system text primary key,    -- stripe | mailerlite | crm | ga4
    source text not null,       -- api (pulled) | import (an export file)
    pulled_at timestamp not null,  -- the records' as-of time
    since timestamp,               -- only records created (Stripe) or updated (MailerLite) since; null: all
    records bigint not null,
    detail text                 -- the imported file's name
);

-- One row per PaymentIntent Stripe lists (payment_intent_id).
create table ext_stripe_payment_intents (
    payment_intent_id text not null,
    status text not null,
    amount_cents bigint,
    currency text,
    event_id text,              -- metadata.event_id, as Stripe holds it
    stripe_created_at timestamp,
    pulled_at timestamp not null
);

-- One row per MailerLite subscriber (one per email address, MailerLite's own rule).
create table ext_mailerlite_subscribers (
    subscriber_id text,
    email text not null,        -- trimmed and lower-cased, the key MailerLite files it under
    status text,
    event_id text,              -- fields.event_id
    payment_status text,        -- fields.payment_status
    subscriber_updated_at timestamp,
    pulled_at timestamp not null
);

-- One row per line of the CRM contacts export.
create table ext_crm_contacts (
    line bigint not null,
    contact_id text,
    email text,
    event_id text,
    pulled_at timestamp not null
);

-- One row per purchase of the GA4 export.
create table ext_ga4_purchases (
    line bigint not null,
    transaction_id text not null,
    event_id text,
    pulled_at timestamp not null
);
