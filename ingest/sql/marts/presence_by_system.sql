-- Grain: one row per system (ingest, crm, mailerlite, stripe, sgtm, meta): how many journeys should reach it, how many
-- it holds, and whether it is configured at all (a disabled destination is expected to hold none).
with journeys as (
    select * from journey_presence
),

settings as (
    select * from stg_run_settings
),

per_system as (
    select 1 as position, 'ingest' as system, count(*) filter (where ingest_expected) as expected,
        count(*) filter (where ingest_expected and in_ingest) as present from journeys
    union all
    select 2, 'crm', count(*) filter (where crm_expected),
        count(*) filter (where crm_expected and in_crm) from journeys
    union all
    select 3, 'mailerlite', count(*) filter (where mailerlite_expected),
        count(*) filter (where mailerlite_expected and in_mailerlite) from journeys
    union all
    select 4, 'stripe', count(*) filter (where stripe_expected),
        count(*) filter (where stripe_expected and in_stripe) from journeys
    union all
    select 5, 'sgtm', count(*) filter (where sgtm_expected),
        count(*) filter (where sgtm_expected and in_sgtm) from journeys
    union all
    select 6, 'meta', count(*) filter (where meta_expected),
        count(*) filter (where meta_expected and in_meta) from journeys
),

final as (
    select
        per_system.position,
        per_system.system,
        case per_system.system
            when 'crm' then settings.crm_enabled
            when 'mailerlite' then settings.mailerlite_enabled
            when 'sgtm' then settings.sgtm_enabled
            when 'meta' then settings.meta_enabled
            else true
        end as is_enabled,
        per_system.expected,
        per_system.present,
        per_system.expected - per_system.present as missing
    from per_system
    cross join settings
)

select * from final
