-- Per system with records: its missing and stale counts are system_missing's and system_stale's rows, it never
-- holds more than it should, and each (system, journey) is judged once.
select system, 'counts' as problem
from system_records
where held > expected
    or missing <> (select count(*) from system_missing where system_missing.system = system_records.system)
    or stale <> (select count(*) from system_stale where system_stale.system = system_records.system)
union all
select system, 'duplicate journey ' || journey_id
from system_presence
group by system, journey_id
having count(*) > 1
