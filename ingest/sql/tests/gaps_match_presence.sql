-- journey_gaps names every journey a system misses and no other: per system, its rows are presence_by_system's
-- missing, and each has a reason. Every row returned is a system where they disagree.
with gaps as (
    select system, count(*) as gaps, count(*) filter (where reason is null or cause is null) as unexplained
    from journey_gaps
    group by system
)

select presence.system, presence.missing, coalesce(gaps.gaps, 0) as gaps, coalesce(gaps.unexplained, 0) as unexplained
from presence_by_system as presence
left join gaps on gaps.system = presence.system
where coalesce(gaps.gaps, 0) <> presence.missing or coalesce(gaps.unexplained, 0) > 0
