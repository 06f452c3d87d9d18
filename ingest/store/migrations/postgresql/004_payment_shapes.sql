-- PostgreSQL twin of ../004_payment_shapes.sql.
-- Payments read from Stripe's real shapes: the charge a payment holds (a refund naming no PaymentIntent finds its
-- payment through it), the product price a succeeded payment was checked against, and refunds of charges no
-- stored payment holds, kept apart instead of as payments of their own. Currency is lower-case everywhere.

alter table payments add column charge_id text;               -- the PaymentIntent's latest_charge
alter table payments add column expected_amount_cents bigint;   -- PRODUCT_PRICE_CENTS when the success was checked
alter table payments add column expected_currency text;      -- PRODUCT_CURRENCY then
-- Succeeded with another amount or currency than the product's: kept, delivered as received, counted apart.
alter table payments add column is_price_mismatch boolean not null default false;

update payments set currency = lower(currency) where currency <> lower(currency);

-- One row per refunded charge that no stored payment holds (e.g. a Charges API charge without a PaymentIntent).
create table unlinked_refunds (
    charge_id text primary key,
    event_id uuid,                 -- the journey the charge's metadata names, if any
    amount_cents bigint,
    refunded_cents bigint not null,
    currency text,
    first_seen_at timestamp not null,
    updated_at timestamp not null,
    last_stripe_event_id text
);
