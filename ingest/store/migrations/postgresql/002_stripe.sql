-- PostgreSQL twin of ../002_stripe.sql: the same tables and columns in PostgreSQL types (text, jsonb,
-- double precision); timestamps stay naive UTC.
-- Stripe: one row per PaymentIntent we created or heard about, the event-sync cursor, and what webhook
-- processing needs on stripe_events. All *_at columns are UTC timestamps.

-- One row per PaymentIntent. `status` only moves forward: open < failed < canceled < succeeded < refunded
-- (a refund implies the payment succeeded, so "succeeded payments" are status in ('succeeded', 'refunded')).
create table payments (
    payment_intent_id text primary key,
    event_id uuid,                 -- the journey the PaymentIntent's metadata names (null when none or not a UUID)
    user_session_id uuid,
    amount_cents bigint,
    currency text,
    status text not null,
    is_orphan boolean not null,    -- its event_id names no stored lead: kept, counted, never dropped
    refunded_cents bigint not null default 0,
    failure_code text,          -- Stripe's last_payment_error code of the latest failure
    source text not null,       -- checkout (created by us) | webhook | sync (first heard of from Stripe)
    created_at timestamp not null,
    updated_at timestamp not null,
    succeeded_at timestamp,
    refunded_at timestamp,
    last_stripe_event_id text
);

create table stripe_sync_cursor (
    name text primary key,
    created_cursor_at timestamp not null,  -- events created at or after this (less an overlap) are listed next time
    updated_at timestamp not null
);

-- `change_key` names the change an event reports ("<type>:<object id>", plus the refunded amount for refunds):
-- Stripe sometimes sends two Event objects for one change, and the second is stored as a duplicate of the first.
alter table stripe_events add column change_key text, add column duplicate_of text;
