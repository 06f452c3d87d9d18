-- Grain: one row per destination (destination) that has deliveries or a recorded circuit state: what waits to
-- be sent, since when it has been due, and whether its circuit was last recorded open (the health strip).
-- oldest_due_at is the earliest time a waiting (pending / retrying) delivery became due; the lag at the
-- snapshot is the replica's taken_at minus it. A delivery due later (backing off) does not count yet; the
-- reader compares with its own snapshot time, so next_attempt_at in the future shows as no lag.
with deliveries as (
    select * from stg_deliveries
),

circuits as (
    select subject_name as destination, state, changed_at
    from stg_alert_states
    where subject_kind = 'circuit'
),

waiting as (
    select
        destination,
        count(*) filter (where delivery_status in ('pending', 'retrying')) as waiting_count,
        count(*) filter (where delivery_status = 'dead') as dead_count,
        min(coalesce(next_attempt_at, created_at)) filter (
            where delivery_status in ('pending', 'retrying')
        ) as oldest_due_at
    from deliveries
    group by destination
),

destinations as (
    select destination from waiting
    union
    select destination from circuits
),

health as (
    select
        destinations.destination,
        coalesce(waiting.waiting_count, 0) as waiting_count,
        coalesce(waiting.dead_count, 0) as dead_count,
        waiting.oldest_due_at,
        coalesce(circuits.state = 'open', false) as is_circuit_open,
        circuits.changed_at as circuit_changed_at
    from destinations
    left join waiting using (destination)
    left join circuits using (destination)
)

select * from health
