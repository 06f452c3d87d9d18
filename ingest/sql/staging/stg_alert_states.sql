-- Grain: one row per alert subject (subject): the state the API last recorded for it.
-- subject is 'circuit:<destination>', 'target:<metric>' or 'deliveries_dead'; changed_at is UTC.
with source as (
    select * from alert_states
),

renamed as (
    select
        subject,
        split_part(subject, ':', 1) as subject_kind,
        nullif(split_part(subject, ':', 2), '') as subject_name,
        state,
        changed_at
    from source
)

select * from renamed
