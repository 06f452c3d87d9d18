-- PostgreSQL twin of ../010_alert_leases.sql.
-- Alerts sent once when several instances' monitors run: a sender claims the oldest pending alert with a lease
-- before it POSTs it, and only the holder of the claim records the outcome. A claim whose lease ran out (the
-- instance died mid-POST) can be taken again; the receiver drops the repeat by its alert_id (Idempotency-Key).
alter table alerts add column lease_until timestamp;  -- null: not claimed
alter table alerts add column claim_id uuid;          -- the current claim: an outcome for another is ignored
