-- A delivered delivery says when: every row returned is one that does not, or that claims delivery before it
-- was created.
select delivery_id, destination, kind, created_at, delivered_at
from stg_deliveries
where delivery_status = 'delivered' and (delivered_at is null or delivered_at < created_at)
