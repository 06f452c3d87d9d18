-- PostgreSQL twin of ../003_outbox.sql: the same tables and columns in PostgreSQL types (text, jsonb,
-- double precision); timestamps stay naive UTC.
-- Delivery worker state on the outbox.
-- claimed_until: a lease the worker takes when it picks a row up to send. While it runs the row is not picked
--   again; on PostgreSQL several instances claim at once (FOR UPDATE SKIP LOCKED), so a lease is only ever
--   taken over once it has expired (its instance died), and the row is sent again with the same idempotency key.
-- failure_count: failed attempts since the row was queued or last replayed: the retry budget and the backoff
--   exponent. attempt_count keeps counting every attempt across replays, so the history stays numbered.
alter table deliveries add column claimed_until timestamp, add column failure_count integer not null default 0;
