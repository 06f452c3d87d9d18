"""The per-destination circuit breaker: outages open it, so nothing is sent (and no retry spent) until a
probe finds the destination answering again."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from ingest.outbox.delivery import AttemptResult


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `threshold` consecutive outage failures; after `cooldown` one probe may go, and its
    answer closes the circuit again or re-opens it for another cool-down."""

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """Closed, open (cooling down) or half-open (cool-down over: a probe may go)."""
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self.opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def seconds_to_probe(self) -> float | None:
        """How long until a probe may go, when open; None when closed or while the probe is out (its answer, not
        the clock, decides what comes next: the worker is woken then)."""
        if self.opened_at is None or self.probing:
            return None
        return max(0.0, self.opened_at + self.cooldown - self._clock())

    def assume_open(self) -> None:
        """Start half-open, as after a cool-down: an outage recorded before a restart is probed before sending."""
        self.opened_at = self._clock() - self.cooldown

    def follow(self, seconds_to_probe: float | None) -> None:
        """Take the state other instances recorded for the destination (PostgreSQL): closed (None), or open with a
        probe allowed in `seconds_to_probe`. Neither counts as this instance opening or closing the circuit."""
        if seconds_to_probe is None:
            self.opened_at = None
            self.consecutive_failures = 0
        else:
            self.opened_at = self._clock() - self.cooldown + seconds_to_probe

    def start_probe(self) -> bool:
        """Take the one probe slot of a half-open circuit."""
        if self.state is not BreakerState.HALF_OPEN or self.probing:
            return False
        self.probing = True
        return True

    def record(self, result: AttemptResult, *, probe: bool) -> None:
        """Count an attempt's result; only outages (5xx, timeouts, refused connections) are failures."""
        if probe:
            self.probing = False
        if result.outage:
            self.consecutive_failures += 1
            if probe or (self.opened_at is None and self.consecutive_failures >= self.threshold):
                if self.opened_at is None:
                    self.times_opened += 1
                self.opened_at = self._clock()
        elif result.status_code is not None and (self.opened_at is None or probe):
            # Any answer that is not an outage shows the destination is up (nothing sent shows nothing). A
            # late success from a request sent before the circuit opened does not close it: only the probe does.
            self.consecutive_failures = 0
            self.opened_at = None
