"""The pure parts of a delivery: backoff, Retry-After, the circuit breaker and pacer (clock injected), claims."""

from __future__ import annotations

import random
import uuid
from datetime import datetime

from ingest.outbox.breaker import CircuitBreaker
from ingest.outbox.delivery import AttemptResult, Verdict, backoff_seconds, parse_retry_after
from ingest.outbox.leases import pick_claims
from ingest.outbox.pacing import Pacer

NOW = datetime(2026, 3, 14, 12, 0, 0)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _result(*, outage: bool, verdict: Verdict = Verdict.RETRY) -> AttemptResult:
    return AttemptResult(verdict, started_at=NOW, outage=outage, status_code=None if outage else 200)


def test_backoff_grows_as_base_times_multiplier_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for failures, expected in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)):
        delays = [backoff_seconds(failures, base=1.0, multiplier=2.0, rng=rng) for _ in range(200)]
        assert min(delays) >= expected and max(delays) <= expected * 1.25
        assert max(delays) - min(delays) > 0  # jittered, so retries don't arrive in step


def test_retry_after_reads_seconds_and_http_dates_and_ignores_nonsense() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("Sat, 14 Mar 2026 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Sat, 14 Mar 2026 11:00:00 GMT", NOW) == 0.0  # in the past: now
    assert parse_retry_after("999999", NOW) == 3600.0  # capped
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_breaker_opens_after_threshold_outages_and_a_probe_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    breaker.record(_result(outage=True), probe=False)
    breaker.record(_result(outage=False, verdict=Verdict.PERMANENT), probe=False)  # a 4xx: the site is up
    breaker.record(_result(outage=True), probe=False)
    unsent = AttemptResult(Verdict.SUPPRESSED, started_at=NOW)
    breaker.record(unsent, probe=False)  # nothing sent says nothing about the destination
    breaker.record(_result(outage=True), probe=False)
    assert breaker.state == "closed"
    breaker.record(_result(outage=True), probe=False)
    assert breaker.state == "open" and breaker.times_opened == 1
    assert not breaker.start_probe()
    clock.now += 10
    assert breaker.state == "half_open" and breaker.start_probe() and not breaker.start_probe()
    breaker.record(_result(outage=True), probe=True)
    assert breaker.state == "open"  # a failed probe re-opens for another cool-down
    breaker.record(_result(outage=False, verdict=Verdict.DELIVERED), probe=False)
    assert breaker.state == "open"  # a late success from before the outage does not close it
    clock.now += 10
    assert breaker.start_probe()
    breaker.record(_result(outage=False, verdict=Verdict.DELIVERED), probe=True)
    assert breaker.state == "closed" and breaker.consecutive_failures == 0


def test_pacer_spaces_requests_and_holds_them_during_a_retry_after_pause() -> None:
    clock = Clock()
    pacer = Pacer(per_minute=120, clock=clock)  # one every 0.5 s
    assert [pacer.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]
    assert pacer.slots_within(1.0) == 0  # the next free slot is 1.5 s away
    clock.now += 2
    assert pacer.slots_within(1.0) == 3
    pacer.pause(5)
    assert pacer.paused_for() == 5 and pacer.reserve() == 5
    assert Pacer(per_minute=0, clock=clock).slots_within(1.0) is None


def test_claims_take_one_delivery_per_journey_and_respect_each_limit() -> None:
    journey, other = uuid.uuid4(), uuid.uuid4()

    def row(destination: str, event_id: uuid.UUID | None) -> dict[str, object]:
        return {"delivery_id": uuid.uuid4(), "destination": destination, "event_id": event_id}

    rows = [
        row("crm", journey),
        row("crm", journey),  # a second update for the same person waits for the first
        row("mailerlite", journey),  # another destination: may go alongside
        row("crm", other),
        row("crm", None),
        row("sgtm", uuid.uuid4()),
    ]
    picked = pick_claims(rows, {"crm": 2, "mailerlite": 1}, frozenset())
    assert picked == [rows[0], rows[2], rows[3]]
    busy = pick_claims(rows, {"crm": 5, "mailerlite": 5}, frozenset({("crm", journey)}))
    assert busy == [rows[2], rows[3], rows[4]]
