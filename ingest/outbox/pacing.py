"""Per-destination pacing: a requests-per-minute limit, and the pause a 429's Retry-After asks for."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Spaces requests to at most `per_minute` (0 = unlimited), and holds them while a Retry-After lasts."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._next_slot = 0.0
        self.paused_until = 0.0

    def reserve(self) -> float:
        """Take the next slot; return how long to wait for it."""
        now = self._clock()
        slot = max(now, self._next_slot, self.paused_until)
        if self.interval:
            self._next_slot = slot + self.interval
        return slot - now

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` (a 429's Retry-After)."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def holds(self) -> bool:
        """Whether a request may have to wait (a rate limit, or a Retry-After pause that is not over)."""
        return bool(self.interval) or self.paused_until > self._clock()

    def paused_for(self) -> float:
        """Seconds left of a Retry-After pause."""
        return max(0.0, self.paused_until - self._clock())

    def slots_within(self, horizon: float) -> int | None:
        """How many requests may start within `horizon` seconds, or None when unlimited."""
        if not self.interval:
            return None
        now = self._clock()
        start = max(now, self._next_slot)
        return max(0, int((now + horizon - start) / self.interval) + 1)
