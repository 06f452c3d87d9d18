-- PostgreSQL twin of ../008_shared_leases.sql.
-- Leases any number of instances share (issue 14).
-- claim_token: names the claim that holds a delivery's lease (set with claimed_until, cleared with it). An outcome
--   or a given-back lease is recorded only while the token still matches, so a worker whose lease expired and was
--   taken over cannot overwrite the new owner's result.
-- delivery_lanes: what every instance shares about sending to one destination, one row each: the next free
--   request slot (its requests per minute hold for all instances together), a Retry-After pause, and the circuit
--   breaker (opened at, when a probe may go, and until when the one probe out holds it). Claims read it, and
--   reserve request slots and the probe under its row lock. Times are the server's clock (naive UTC), so instances
--   on hosts whose clocks differ still space their requests on one clock.
alter table deliveries add column claim_token uuid;

create table delivery_lanes (
    destination text primary key,
    next_slot timestamp,
    paused_until timestamp,
    circuit_opened_at timestamp,
    probe_at timestamp,
    probe_until timestamp,
    updated_at timestamp
);
-- No rows here: each worker stores its destinations' rows at start (a migrated database stays empty, as
-- `attribution db copy` wants it).

-- What claims look up: due rows per destination in due order, a journey's deliveries, live leases. (DuckDB scans
-- its columns instead; its indexes would cost every update of these rows.)
create index outbox_deliveries_waiting on deliveries (destination, next_attempt_at)
    where status in ('pending', 'retrying');
create index outbox_deliveries_event on deliveries (event_id);
create index outbox_deliveries_session on deliveries (user_session_id);
create index outbox_deliveries_leased on deliveries (claimed_until) where claimed_until is not null;
create index outbox_consent_event on consent_ledger (event_id, recorded_at);
create index outbox_consent_session on consent_ledger (user_session_id, recorded_at);

-- Wake-ups across instances: a transaction that inserted deliveries notifies every listening worker when it commits
-- (one notification per transaction; the channel is ingest/outbox/wakeups.py's CHANNEL).
create function outbox_deliveries_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('attribution_deliveries', '');
    return null;
end
$$;
create trigger outbox_deliveries_notify after insert on deliveries
    for each statement execute function outbox_deliveries_notify();
