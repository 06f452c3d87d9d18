-- PostgreSQL twin of ../005_alerts.sql.
-- Alerting: the state each alert subject was last seen in, and the durable queue of alerts to send.
-- No email or phone is ever stored here: subjects are destinations and metric names, payloads carry counts.

-- One row per subject ('circuit:<destination>', 'target:<metric>', 'deliveries_dead'). An alert is queued only
-- when a subject's state changes, in the same transaction that records the change, so each change alerts once.
-- For 'deliveries_dead', changed_at is the cursor: deliveries that went dead after it are not yet summarised.
create table alert_states (
    subject text primary key,
    state text not null,
    changed_at timestamp not null
);

-- One row per alert to send to ATTRIBUTION_ALERT_WEBHOOK_URL, oldest first. status: pending | sent | failed
-- (the receiver refused it for good, e.g. a 404 for a revoked webhook). attempts counts POSTs made.
create table alerts (
    alert_id uuid primary key,
    alert text not null,
    subject text not null,
    payload jsonb not null,
    status text not null,
    attempts integer not null default 0,
    next_attempt_at timestamp not null,
    last_error text,
    created_at timestamp not null,
    sent_at timestamp
);
