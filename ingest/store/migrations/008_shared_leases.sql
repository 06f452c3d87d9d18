-- Leases any number of instances share (issue 14).
-- claim_token: names the claim that holds a delivery's lease (set with claimed_until, cleared with it). An outcome
--   or a given-back lease is recorded only while the token still matches, so a worker whose lease expired and was
--   taken over cannot overwrite the new owner's result.
-- delivery_lanes: what every instance shares about sending to one destination, one row each: the next free
--   request slot (its requests per minute hold for all instances together), a Retry-After pause, and the circuit
--   breaker (opened at, when a probe may go, and until when the one probe out holds it). On PostgreSQL claims read
--   and reserve it; the embedded store's one process keeps this state in memory, so here the table stays empty.
alter table deliveries add column claim_token uuid;

create table delivery_lanes (
    destination varchar primary key,
    next_slot timestamp,
    paused_until timestamp,
    circuit_opened_at timestamp,
    probe_at timestamp,
    probe_until timestamp,
    updated_at timestamp
);
