-- PostgreSQL twin of ../011_change_stamps.sql.
-- Change stamps for `attribution warehouse` (ingest/reconcile/warehouse.py): change_xid is the id of the
-- transaction that last wrote the row (pg_current_xact_id, 64-bit, never wraps), stamped by the column default on
-- insert and by a trigger on update, so no repository has to remember it. A round reads the rows whose change_xid
-- is at or above the oldest transaction still running at the previous round's snapshot: a transaction that
-- commits late (out of order, on another instance) is still running then, so its rows are read the next time.
-- Rows written before this migration keep a null stamp: the warehouse's first, full copy reads them, and any later
-- write stamps them. Adding a nullable column with no default first, then the default, rewrites no table.
-- consent_ledger and delivery_attempts are append-only (never updated): no trigger.

create function attribution_stamp_change() returns trigger language plpgsql as $$
begin
    new.change_xid := pg_current_xact_id()::text::bigint;
    return new;
end
$$;

alter table leads add column change_xid bigint;
alter table leads alter column change_xid set default pg_current_xact_id()::text::bigint;
create index leads_change_xid on leads (change_xid);
create trigger leads_change_xid before update on leads
    for each row execute function attribution_stamp_change();

alter table deliveries add column change_xid bigint;
alter table deliveries alter column change_xid set default pg_current_xact_id()::text::bigint;
create index deliveries_change_xid on deliveries (change_xid);
create trigger deliveries_change_xid before update on deliveries
    for each row execute function attribution_stamp_change();

alter table payments add column change_xid bigint;
alter table payments alter column change_xid set default pg_current_xact_id()::text::bigint;
create index payments_change_xid on payments (change_xid);
create trigger payments_change_xid before update on payments
    for each row execute function attribution_stamp_change();

alter table stripe_events add column change_xid bigint;
alter table stripe_events alter column change_xid set default pg_current_xact_id()::text::bigint;
create index stripe_events_change_xid on stripe_events (change_xid);
create trigger stripe_events_change_xid before update on stripe_events
    for each row execute function attribution_stamp_change();

alter table unlinked_refunds add column change_xid bigint;
alter table unlinked_refunds alter column change_xid set default pg_current_xact_id()::text::bigint;
create index unlinked_refunds_change_xid on unlinked_refunds (change_xid);
create trigger unlinked_refunds_change_xid before update on unlinked_refunds
    for each row execute function attribution_stamp_change();

alter table alerts add column change_xid bigint;
alter table alerts alter column change_xid set default pg_current_xact_id()::text::bigint;
create index alerts_change_xid on alerts (change_xid);
create trigger alerts_change_xid before update on alerts
    for each row execute function attribution_stamp_change();

alter table consent_ledger add column change_xid bigint;
alter table consent_ledger alter column change_xid set default pg_current_xact_id()::text::bigint;
create index consent_ledger_change_xid on consent_ledger (change_xid);

alter table delivery_attempts add column change_xid bigint;
alter table delivery_attempts alter column change_xid set default pg_current_xact_id()::text::bigint;
create index delivery_attempts_change_xid on delivery_attempts (change_xid);
