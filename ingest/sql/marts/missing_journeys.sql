-- Grain: one row per journey missing in at least one system it should reach (journey_id): the systems it misses
-- (in presence_by_system order, as a list and as text) and why, one clause per system (see journey_gaps). These
-- are the journeys data_consistency does not count as consistent.
with gaps as (
    select * from journey_gaps
),

final as (
    select
        journey_id,
        any_value(event_id) as event_id,
        bool_or(is_orphan) as is_orphan,
        any_value(orphan_payment_intent_id) as orphan_payment_intent_id,
        list(system order by position) as missing_systems,
        string_agg(system, ', ' order by position) as missing_in,
        string_agg(system || ': ' || reason, '; ' order by position) as why
    from gaps
    group by journey_id
)

select * from final
