-- Grain: one row: verified_data_consistency = journeys present in every system they should reach / all journeys,
-- as data_consistency, but with "present" decided by each system's own records where they were pulled or imported
-- (verified_journey_presence); systems without records are named in unverified_systems and judged by our outbox.
with journeys as (
    select * from verified_journey_presence
),

pulls as (
    select system from stg_ext_pulls
),

settings as (
    select * from stg_run_settings
),

known as (
    -- The systems a journey can be checked against; Meta only when configured (its records cannot be read).
    select system from (values ('crm'), ('ga4'), ('mailerlite'), ('stripe')) as systems(system)
    union all
    select 'meta' from settings where meta_enabled
),

counts as (
    select
        count(*) filter (where is_verified_consistent) as numerator,
        count(*) as denominator
    from journeys
),

systems as (
    select
        list(system order by system) filter (where system in (select system from pulls)) as verified_systems,
        list(system order by system) filter (where system not in (select system from pulls)) as unverified_systems
    from known
),

final as (
    select
        'verified_data_consistency' as metric,
        case when denominator = 0 then 1.0 else numerator / denominator end as value,
        1.0 as target,
        '>=' as comparator,
        value >= target as met,
        numerator,
        denominator,
        coalesce(systems.verified_systems, []) as verified_systems,
        coalesce(systems.unverified_systems, []) as unverified_systems
    from counts
    cross join systems
)

select * from final
