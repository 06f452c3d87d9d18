-- Delivery worker state on the outbox.
-- claimed_until: a lease the worker takes when it picks a row up to send. While it runs the row is not picked
--   again; a process that dies mid-send leaves the lease behind, and the next start releases it (one writer
--   process at a time, so every lease found at start-up belongs to a dead process), so the row is sent again
--   with the same idempotency key.
-- failure_count: failed attempts since the row was queued or last replayed: the retry budget and the backoff
--   exponent. attempt_count keeps counting every attempt across replays, so the history stays numbered.
alter table deliveries add column claimed_until timestamp;
alter table deliveries add column failure_count integer not null default 0;
