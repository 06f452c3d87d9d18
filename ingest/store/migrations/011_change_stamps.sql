-- Change stamps for `attribution warehouse`, which keeps the analytics replica current from PostgreSQL
-- incrementally (see postgresql/011_change_stamps.sql, where a column default and a trigger fill change_xid with
-- the id of the transaction that last wrote the row). The embedded store needs none: its API publishes the replica
-- from one snapshot of the whole file. The column is here so both engines keep the same tables and columns (and
-- `attribution db copy` moves a file's history across unchanged); on DuckDB it stays null.

alter table leads add column change_xid bigint;
alter table deliveries add column change_xid bigint;
alter table payments add column change_xid bigint;
alter table stripe_events add column change_xid bigint;
alter table unlinked_refunds add column change_xid bigint;
alter table alerts add column change_xid bigint;
alter table consent_ledger add column change_xid bigint;
alter table delivery_attempts add column change_xid bigint;
