-- Grain: one row per system whose own records were pulled or imported (system): as of when, how, and the window.
with source as (
    select * from ext_pulls
),

renamed as (
    select
        system,
        source as record_source,
        pulled_at as as_of,
        since,
        records
    from source
)

select * from renamed
