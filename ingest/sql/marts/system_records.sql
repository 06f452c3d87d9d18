-- Grain: one row per system whose own records were pulled or imported (system): as of when, how many journeys
-- it should hold by our records (expected, inside the pull's window), how many it holds (held), and how many it
-- misses, holds unexpectedly or holds stale (system_missing, system_unexpected, system_stale).
with pulls as (
    select * from stg_ext_pulls
),

presence as (
    select * from system_presence
    where is_verifiable
),

counted as (
    select system, count(*) as expected, count(*) filter (where is_held) as held
    from presence
    group by system
),

unexpected as (
    select system, count(distinct entry) as unexpected from system_unexpected group by system
),

stale as (
    select system, count(*) as stale from system_stale group by system
),

final as (
    select
        pulls.system,
        case pulls.system when 'stripe' then 1 when 'mailerlite' then 2 when 'crm' then 3 else 4 end as position,
        pulls.record_source,
        pulls.as_of,
        pulls.since,
        pulls.records,
        coalesce(counted.expected, 0) as expected,
        coalesce(counted.held, 0) as held,
        coalesce(counted.expected, 0) - coalesce(counted.held, 0) as missing,
        coalesce(unexpected.unexpected, 0) as unexpected,
        coalesce(stale.stale, 0) as stale
    from pulls
    left join counted on counted.system = pulls.system
    left join unexpected on unexpected.system = pulls.system
    left join stale on stale.system = pulls.system
)

select * from final
