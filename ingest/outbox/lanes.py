"""A destination's lane: the worker's own (client, limits, breaker, pacer, what it has in flight) and, on PostgreSQL,
what every instance shares about it in `delivery_lanes`, one row per destination: the next free request slot (its
requests per minute hold for all instances together), a Retry-After pause, and the circuit (opened at, when a probe
may go, until when the one probe out holds it). Times there are the server's clock, so instances on hosts whose
clocks differ space their requests on one clock.

How instances agree. A claim reads the lanes it wants first: a circuit cooling down gets nothing; a half-open one
asks for one delivery, and the claim takes the probe under the row's lock (FOR UPDATE SKIP LOCKED) only once a
delivery is picked; a paced lane's row is locked for the claim's transaction and gives only the slots starting
within the horizon, each claimed delivery its own. Changes that come from sends (a circuit opened by this
instance's failures, a probe's answer, a 429's pause) are single autocommit statements, never inside the writer's
transaction: they wait a moment for a claim holding the row and hold nothing themselves, so no two transactions
can wait for each other. Each worker's own breaker then follows what its claims read. `delivery_lanes` is this
module's table alone, so its SQL lives here, beside what it means (the outbox's other SQL is in repository.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ingest.core.vocabulary import Destination
from ingest.outbox.breaker import BreakerState, CircuitBreaker
from ingest.outbox.delivery import AttemptResult
from ingest.outbox.destinations import DestinationClient
from ingest.outbox.pacing import Pacer

MAX_CLAIM = 1024  # most deliveries one destination holds claimed (sending or queued to send) at once
# Claim about this long's worth of sends: long enough that claims (a few table scans each) stay rare under
# load, short enough that a claimed delivery goes out soon after its consent was checked.
QUEUE_SECONDS = 1.0
PACING_HORIZON_SECONDS = 1.0  # a rate-limited destination claims only what it may send within this long
# A paced lane whose row another instance's claim holds right now: try again this soon.
LANE_BUSY_RETRY_SECONDS = 0.05


@dataclass
class Lane:
    """One destination's client, limits and in-flight bookkeeping in this worker."""

    destination: Destination
    client: DestinationClient | None  # None: not configured, deliveries are recorded as disabled
    concurrency: int
    pacer: Pacer
    breaker: CircuitBreaker
    semaphore: asyncio.Semaphore
    inflight: dict[UUID, UUID | None] = field(default_factory=dict)  # delivery_id -> event_id
    seconds_per_send: float | None = None  # moving average of request durations
    sent: int = 0
    # Why nothing is claimed for it now (MailerLite: our custom fields not ensured yet), else None.
    held: str | None = None
    setup_failed: bool = False  # its set-up was tried and failed: held until a retry succeeds
    # PostgreSQL: seconds between requests for all instances together (0: unlimited), paced by the store, and
    # until when (time.monotonic()) claiming for it is not worth a try (its next free slot, a shared pause).
    shared_interval: float = 0.0
    not_before: float = 0.0
    # Changes this worker queued for the shared row, and how many of them are written: a read taken while one is
    # still on its way is older than this worker's own view, so the lane does not follow it.
    changes_queued: int = 0
    changes_written: int = 0

    def settled(self) -> int | None:
        """The count of changes queued when every one of them is written (a read may then be followed), else None."""
        return self.changes_queued if self.changes_queued == self.changes_written else None

    def observe(self, result: AttemptResult) -> None:
        """Fold a request's duration into the moving average that sizes claims."""
        if result.duration_ms is None:
            return
        seconds = result.duration_ms / 1000
        previous = self.seconds_per_send
        self.seconds_per_send = seconds if previous is None else 0.9 * previous + 0.1 * seconds

    def queue_cap(self) -> int:
        """How many to hold claimed: about QUEUE_SECONDS of sends at the observed speed."""
        floor = 2 * self.concurrency
        if self.seconds_per_send is None:
            return floor
        wanted = int(self.concurrency * QUEUE_SECONDS / max(self.seconds_per_send, 0.001))
        return max(floor, min(wanted, MAX_CLAIM))

    def claimable(self) -> tuple[int, bool, bool]:
        """(How many it could take now, whether that is worth a claim on its own, whether it is a probe)."""
        if self.held is not None or self.pacer.paused_for() > 0 or self.not_before > time.monotonic():
            return 0, False, False
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return 0, False, False
        if state is BreakerState.HALF_OPEN:
            return (1, True, True) if not self.breaker.probing else (0, False, False)
        cap = self.queue_cap()
        room = cap - len(self.inflight)
        slots = self.pacer.slots_within(PACING_HORIZON_SECONDS)
        if slots is not None:
            room = min(room, slots)
        # Worth a claim when empty or half drained: a busy lane then costs few claim transactions.
        worth = room > 0 and (not self.inflight or room >= cap // 2)
        return max(room, 0), worth, False


@dataclass(frozen=True)
class LaneView:
    """What the state instances share said of one destination at a claim (PostgreSQL; none on DuckDB)."""

    circuit_open: bool = False
    probe: bool = False  # this claim holds the destination's one probe: its delivery is that probe
    probing_elsewhere: bool = False  # another instance's probe is out: its answer decides, ask again shortly
    wait: float | None = None  # seconds until claiming for it is worth trying again (a probe time, the next
    # free request slot, a pause); None: whenever something is due


def follow(lane: Lane, view: LaneView, poll: float) -> bool:
    """Take what a claim read of the destination's shared state into the worker's lane; whether its claimed
    delivery (if any) is the circuit's probe."""
    breaker = lane.breaker
    if view.probe:  # this claim holds the one probe of a half-open circuit
        if not breaker.probing:
            breaker.follow(0.0)
            breaker.start_probe()
        return True
    breaker.probing = False
    if not view.circuit_open:
        if breaker.opened_at is not None:
            breaker.follow(None)  # another instance's probe closed it
        if view.wait:
            lane.not_before = time.monotonic() + view.wait
    elif view.probing_elsewhere:
        breaker.follow(min(view.wait if view.wait is not None else poll, poll))  # ask again shortly
    else:
        breaker.follow(view.wait or 0.0)
    return False


@dataclass(frozen=True)
class LaneChange:
    """A change of what instances share about a destination: its circuit (`opened`, `probe_failed`,
    `probe_released`, `closed`) or a Retry-After pause (`paused` for `seconds`)."""

    destination: str
    change: str
    seconds: float = 0.0


def breaker_change(
    lane: Lane, before: BreakerState, result: AttemptResult, *, probe: bool, cooldown: float
) -> LaneChange | None:
    """What an attempt did to the circuit, for other instances to know (None: nothing they need)."""
    after = lane.breaker.state
    if probe:
        if after is BreakerState.CLOSED:
            change = "closed"
        elif result.outage:
            change = "probe_failed"
        else:
            change = "probe_released"  # nothing was sent: another probe may go
        return LaneChange(lane.destination.value, change, cooldown)
    if before is BreakerState.CLOSED and after is not BreakerState.CLOSED:
        return LaneChange(lane.destination.value, "opened", cooldown)
    return None


# --- delivery_lanes (PostgreSQL) ------------------------------------------------------------------------------

_LANE_COLUMNS = ("destination", "next_slot", "paused_until", "circuit_opened_at", "probe_at", "probe_until")
_SERVER_NOW = "clock_timestamp() at time zone 'UTC'"  # the server's clock, naive UTC like every column


@dataclass(frozen=True)
class LaneState:
    """One destination's row of `delivery_lanes`."""

    destination: str
    next_slot: datetime | None
    paused_until: datetime | None
    circuit_opened_at: datetime | None
    probe_at: datetime | None
    probe_until: datetime | None


def lane_states(
    conn: Any, destinations: Sequence[str], *, lock: bool = False
) -> tuple[datetime, dict[str, LaneState]]:
    """The server's clock and these destinations' shared state; `lock`: hold their rows for this transaction,
    skipping any another claim holds now (missing from the answer: try again shortly)."""
    rows = conn.execute(
        f"select {_SERVER_NOW}, {', '.join(_LANE_COLUMNS)} from delivery_lanes "  # noqa: S608 - fixed fragments
        "where destination in (select unnest(?::text[]))" + (" for update skip locked" if lock else ""),
        [list(destinations)],
    ).fetchall()
    if rows:
        now: datetime = rows[0][0]
    else:  # every row held by other claims (or none stored): the clock alone
        found = conn.execute(f"select {_SERVER_NOW}").fetchone()
        assert found is not None
        now = found[0]
    return now, {row[1]: LaneState(*row[1:]) for row in rows}


def ensure_lanes(destinations: Sequence[str], conn: Any) -> None:
    """Store these destinations' lane rows where missing (a worker at start, on an autocommit connection)."""
    conn.execute(
        "insert into delivery_lanes (destination) select unnest(?::text[]) on conflict (destination) do nothing",
        [list(destinations)],
    )


def _reserve_slots(conn: Any, destination: str, next_slot: datetime) -> None:
    """Move a destination's next free request slot (its row is locked by this claim)."""
    conn.execute(
        f"update delivery_lanes set next_slot = ?, updated_at = {_SERVER_NOW} where destination = ?",  # noqa: S608
        [next_slot, destination],
    )


def take_probe(conn: Any, destination: str, lease_seconds: float) -> bool:
    """Take the one probe of a half-open circuit for `lease_seconds`, unless another instance holds it (or its row)."""
    row = conn.execute(
        f"update delivery_lanes set probe_until = {_SERVER_NOW} + ? * interval '1 second', "  # noqa: S608
        f"updated_at = {_SERVER_NOW} where destination = ("
        "select destination from delivery_lanes where destination = ? and circuit_opened_at is not null "
        f"and probe_at <= {_SERVER_NOW} and (probe_until is null or probe_until < {_SERVER_NOW}) "
        "for update skip locked) returning destination",
        [lease_seconds, destination],
    ).fetchone()
    return row is not None


_CIRCUIT_CHANGES = {
    "opened": f"circuit_opened_at = coalesce(circuit_opened_at, {_SERVER_NOW}), probe_at = case when "
    f"circuit_opened_at is null then {_SERVER_NOW} + ? * interval '1 second' else probe_at end",
    "probe_failed": f"probe_at = {_SERVER_NOW} + ? * interval '1 second', probe_until = null",
    "probe_released": "probe_until = null",
    "closed": "circuit_opened_at = null, probe_at = null, probe_until = null",
    "paused": f"paused_until = greatest(paused_until, {_SERVER_NOW} + ? * interval '1 second')",
}


def record_lane_change(change: LaneChange, conn: Any) -> None:
    """Apply one change on an autocommit connection (each statement commits alone and holds no lock afterwards).

    `opened`: open the circuit unless open already (a probe after the cool-down); `probe_failed`: the next probe
    after another cool-down; `probe_released`: the probe sent nothing, another may go; `closed`: a probe was
    answered; `paused`: hold every instance's requests for `seconds` (a 429's Retry-After).
    """
    sets = _CIRCUIT_CHANGES[change.change]
    ensure_lanes([change.destination], conn)
    conn.execute(
        f"update delivery_lanes set {sets}, updated_at = {_SERVER_NOW} where destination = ?",  # noqa: S608
        ([change.seconds] if "?" in sets else []) + [change.destination],
    )


# --- what a claim does with them --------------------------------------------------------------------------------


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


def _circuit_view(state: LaneState | None, server_now: datetime) -> LaneView:
    """What a lane's row says now: closed (maybe paused), open until a probe time, probed elsewhere, or half-open."""
    if state is None or state.circuit_opened_at is None:
        if state is not None and state.paused_until is not None and state.paused_until > server_now:
            return LaneView(
                wait=_seconds(state.paused_until - server_now)
            )  # a Retry-After another instance got
        return LaneView()
    if state.probe_at is not None and state.probe_at > server_now:
        return LaneView(circuit_open=True, wait=_seconds(state.probe_at - server_now))
    if state.probe_until is not None and state.probe_until >= server_now:  # another instance's probe is out
        return LaneView(
            circuit_open=True, probing_elsewhere=True, wait=_seconds(state.probe_until - server_now)
        )
    return LaneView(circuit_open=True, wait=0.0)  # half-open: the next claim with something due probes


def circuit_views(destinations: Sequence[str], conn: Any) -> dict[str, LaneView]:
    """A read of the shared circuits, for a worker whose own breaker is not closed and has nothing to claim
    (another instance's probe may have closed it since)."""
    server_now, states = lane_states(conn, destinations)
    return {destination: _circuit_view(states.get(destination), server_now) for destination in destinations}


def shared_circuits(conn: Any, limits: dict[str, int], views: dict[str, LaneView], probes: set[str]) -> None:
    """Nothing for a destination cooling down, paused or probed by another instance; a half-open one asks for one
    delivery, its probe (taken by `take_probe` once a delivery is picked). Narrows `limits` in place."""
    server_now, states = lane_states(conn, list(limits))
    for destination in list(limits):
        view = views[destination] = _circuit_view(states.get(destination), server_now)
        if view.circuit_open and view.wait == 0.0 and not view.probing_elsewhere:
            limits[destination] = min(limits[destination], 1)
            probes.add(destination)
        elif view.circuit_open or view.wait:
            limits[destination] = 0


@dataclass(frozen=True)
class Slots:
    """A paced lane's free request slots at a claim, on the server's clock."""

    start: datetime
    interval: float
    server_now: datetime


def shared_pacing(
    conn: Any, paced: dict[str, float], horizon: float, limits: dict[str, int], views: dict[str, LaneView]
) -> dict[str, Slots]:
    """Lock each paced lane's row for this claim (skipping one another claim holds) and narrow `limits` to the
    slots that start within `horizon` seconds."""
    paced = {d: interval for d, interval in paced.items() if limits.get(d, 0) > 0 and interval > 0}
    if not paced:
        return {}
    server_now, locked = lane_states(conn, list(paced), lock=True)
    ahead = timedelta(seconds=horizon)
    found: dict[str, Slots] = {}
    for destination, interval in paced.items():
        state = locked.get(destination)
        if state is None:  # another claim holds the row now (or no worker stored it yet: each does at start)
            limits[destination] = 0
            views[destination] = replace(views.get(destination, LaneView()), wait=LANE_BUSY_RETRY_SECONDS)
            continue
        start = max(t for t in (state.next_slot, state.paused_until, server_now) if t is not None)
        if start > server_now + ahead:
            limits[destination] = 0
            views[destination] = replace(
                views.get(destination, LaneView()), wait=_seconds(start - server_now - ahead)
            )
            continue
        available = int(_seconds(server_now + ahead - start) / interval) + 1
        limits[destination] = min(limits[destination], available)
        found[destination] = Slots(start, interval, server_now)
    return found


def reserve_slots(
    conn: Any,
    slots: dict[str, Slots],
    picked: Sequence[dict[str, Any]],
    horizon: float,
    views: dict[str, LaneView],
) -> dict[UUID, float]:
    """Give each picked delivery of a paced lane the next slot in turn and move the lane's next free slot; return
    seconds from now to each one's slot."""
    send_in: dict[UUID, float] = {}
    for destination, free in slots.items():
        rows = [row for row in picked if row["destination"] == destination]
        if not rows:
            continue
        for index, row in enumerate(rows):
            slot = free.start + timedelta(seconds=index * free.interval)
            send_in[row["delivery_id"]] = _seconds(slot - free.server_now)
        next_slot = free.start + timedelta(seconds=len(rows) * free.interval)
        _reserve_slots(conn, destination, next_slot)
        wait = _seconds(next_slot - free.server_now - timedelta(seconds=horizon))
        views[destination] = replace(views.get(destination, LaneView()), wait=wait)
    return send_in
