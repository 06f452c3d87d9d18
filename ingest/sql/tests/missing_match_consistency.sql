-- The journeys missing somewhere are exactly those data_consistency does not count: every row returned says by how
-- many they differ.
with missing as (
    select count(*) as journeys from missing_journeys
),

consistency as (
    select denominator - numerator as inconsistent from data_consistency
)

select missing.journeys, consistency.inconsistent
from missing
cross join consistency
where missing.journeys <> consistency.inconsistent
