-- Grain: one row per journey (journey_id), as journey_presence: whether it is present in every system it should
-- reach, presence decided by the system's own records where they can tell (system_presence.is_verifiable), else
-- by our outbox as in journey_presence. Meta keeps no records we can read, so its Purchase is judged by our outbox
-- alone (and Meta is named among the unverified systems). An orphan payment's journey is never consistent.
with journeys as (
    select * from journey_presence
),

presence as (
    select * from system_presence
),

gaps as (
    select
        journey_id,
        bool_or(case when is_verifiable then not is_held else not in_outbox end) as has_gap,
        bool_or(is_verifiable) as is_verified_somewhere
    from presence
    group by journey_id
),

final as (
    select
        journeys.journey_id,
        journeys.event_id,
        journeys.is_orphan,
        journeys.journey_day,
        coalesce(gaps.is_verified_somewhere, false) as is_verified_somewhere,
        not journeys.is_orphan
            and not coalesce(gaps.has_gap, false)
            and (journeys.in_meta or not journeys.meta_expected) as is_verified_consistent
    from journeys
    left join gaps on gaps.journey_id = journeys.journey_id
)

select * from final
