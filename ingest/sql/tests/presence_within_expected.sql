-- A system never holds more journeys than are expected in it, and a disabled destination is expected to hold none.
select system, is_enabled, expected, present
from presence_by_system
where present > expected or present < 0 or (not is_enabled and expected > 0)
