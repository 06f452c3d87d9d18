"""The delivery worker: an asyncio loop in the API process that claims due outbox rows through the writer,
sends them with per-destination concurrency, pacing and a circuit breaker, and records every attempt.

On PostgreSQL every instance runs one, claiming from the same table: what they must agree on (the requests per
minute a destination allows, its circuit, Retry-After pauses) is shared through `delivery_lanes` (lanes.py), and
deliveries another instance commits wake it (wakeups.py); its own breaker and pacer follow what its claims read."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

import duckdb
import psycopg

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import DeliveryStatus, Destination
from ingest.outbox.breaker import BreakerState, CircuitBreaker
from ingest.outbox.delivery import PROBE_FAILED, AttemptResult, Verdict, deliver_one, send_time_gate, settle
from ingest.outbox.destinations import DestinationClient, build_clients, destination_limits
from ingest.outbox.destinations.mailerlite import ensure_mailerlite_fields
from ingest.outbox.lanes import (
    PACING_HORIZON_SECONDS,
    Lane,
    LaneChange,
    breaker_change,
    circuit_views,
    ensure_lanes,
    follow,
    record_lane_change,
)
from ingest.outbox.leases import (
    Claim,
    ClaimRequest,
    any_due,
    claim_deliveries,
    expired_leases,
    release_all_deliveries,
)
from ingest.outbox.pacing import Pacer
from ingest.outbox.recorder import Recorder
from ingest.outbox.records import ClaimedDelivery, RecordedOutcome, Unclaimed
from ingest.outbox.wakeups import Wakeups
from ingest.store.database import Database
from ingest.store.postgres import PostgresDatabase
from ingest.store.writer import StoreUnavailable, WriterStopped

log = logging.getLogger(__name__)

LONG_PAUSE_SECONDS = 1.0  # a claimed delivery facing a longer Retry-After pause goes back to the table
# Attempt outcomes logged besides a delivery going dead: failures it may still get over.
_WORTH_LOGGING = frozenset({DeliveryStatus.RETRYING, PROBE_FAILED, Verdict.RATE_LIMITED})
STORE_RETRY_SECONDS = 1.0  # a claim the store could not answer is tried again this soon (or at the poll)
FIELDS_RETRY_FIRST_SECONDS = 1.0  # ensuring MailerLite's custom fields failed: first retry, doubling up to
FIELDS_RETRY_MAX_SECONDS = 60.0


# --- the worker ---------------------------------------------------------------------------------------------


class DeliveryWorker:
    """Claims, sends and records deliveries until stopped; one per API process."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        clients: dict[Destination, DestinationClient] | None = None,
        rng: random.Random | None = None,
        on_circuit_change: Callable[[Destination, bool], None] | None = None,
    ) -> None:
        self._database = database
        self._on_circuit_change = (
            on_circuit_change  # told (destination, opened) when a circuit opens or closes
        )
        self._settings = settings
        self._clients = clients if clients is not None else build_clients(settings)
        self._rng = rng or random.Random()
        # Other instances may claim from this store: requests per minute, circuits and pauses are shared there.
        self._shared = database.engine == "postgresql"
        self._lanes: dict[Destination, Lane] = {}
        for destination in Destination:
            concurrency, per_minute = destination_limits(settings, destination)
            shared_pacing = self._shared and per_minute > 0
            self._lanes[destination] = Lane(
                destination=destination,
                client=self._clients.get(destination),
                concurrency=concurrency,
                pacer=Pacer(0 if shared_pacing else per_minute),  # shared: the claim gives each its slot
                shared_interval=60.0 / per_minute if shared_pacing else 0.0,
                breaker=CircuitBreaker(
                    settings.attribution_circuit_breaker_threshold,
                    settings.attribution_circuit_breaker_cooldown_seconds,
                ),
                semaphore=asyncio.Semaphore(concurrency),
            )
        self._recorder = Recorder(database.writer)
        self._lease = timedelta(seconds=settings.attribution_delivery_lease_seconds)
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[UUID, list[asyncio.Future[None]]] = {}
        self._urgent: set[UUID] = set()
        self._found_none = False  # the last claim leased nothing: the next one reads before it writes
        self._preparing: asyncio.Task[None] | None = None
        self._lane_changes: asyncio.Queue[LaneChange] = asyncio.Queue()
        self._sharing: asyncio.Task[None] | None = None
        self._circuits_read_at = 0.0
        # Deliveries another instance commits wake this worker (LISTEN/NOTIFY), polling is the fallback.
        self._wakeups = (
            Wakeups(database.url, self._wake.set) if isinstance(database, PostgresDatabase) else None
        )

    async def start(self) -> None:
        """Release leases a dead process left behind (embedded store), then start claiming.

        On PostgreSQL nothing is released: the leases found belong to other instances, live ones are theirs, and a
        stopped instance's are taken over by any claim once they expire (ATTRIBUTION_DELIVERY_LEASE_SECONDS).
        """
        if self._shared:
            destinations = [destination.value for destination in Destination]
            await asyncio.to_thread(self._database.read, functools.partial(ensure_lanes, destinations))
            expired = await asyncio.to_thread(self._database.read, expired_leases)
            if expired:
                log.warning(
                    "deliveries a stopped instance left in flight are taken over (their leases ran out)",
                    extra={"count": expired},
                )
            self._sharing = asyncio.create_task(self._share_lane_changes(), name="delivery-lane-changes")
        if self._wakeups is not None:
            self._wakeups.start()
        else:
            released = await self._database.writer.submit(release_all_deliveries, None)
            if released:
                log.warning("released deliveries left in flight by a previous run", extra={"count": released})
        self._recorder.start()
        self._preparing = self._prepare_mailerlite()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="delivery-dispatcher")

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop claiming, let sends in flight finish for up to `grace_seconds`, then close the clients.

        A send cut off here keeps its lease: the embedded store's next start sends it again, on PostgreSQL another
        instance takes it over once the lease has run out; with the same idempotency key either way.
        """
        self._stopping = True
        self._wake.set()
        if self._wakeups is not None:
            await self._wakeups.stop()
        await self._stop_preparing()
        if self._dispatcher is not None:
            await self._dispatcher
            self._dispatcher = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._recorder.close()
        await self._stop_sharing()
        for client in self._clients.values():
            await client.aclose()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def resume_open_circuits(self, destinations: Iterable[Destination]) -> None:
        """Circuits recorded open by a previous run start half-open: a probe decides, and closing them is told."""
        for destination in destinations:
            lane = self._lanes[destination]
            if lane.client is not None:
                lane.breaker.assume_open()

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def wait_for(self, deliveries: Mapping[UUID, Destination], timeout: float) -> None:
        """Send these deliveries ahead of the queue and wait up to `timeout` s until each has an outcome.

        Deliveries to a destination that cannot send now (its circuit is not closed, or its set-up failed and is being
        retried) are not waited for: they stay queued, and the caller answers at once instead of after `timeout`.
        """
        wanted = [
            delivery_id
            for delivery_id, destination in deliveries.items()
            if (lane := self._lanes.get(destination)) is not None
            and lane.breaker.state is BreakerState.CLOSED
            and not lane.setup_failed
        ]
        if not wanted or self._stopping:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for item in wanted:
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(item, []).append(future)
            futures.append(future)
        self._urgent.update(wanted)
        self._wake.set()
        try:
            await asyncio.wait(futures, timeout=timeout)
        finally:
            for item, future in zip(wanted, futures, strict=True):
                waiting = self._waiters.get(item, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._waiters.pop(item, None)
                    self._urgent.discard(item)

    def status(self) -> dict[str, Any]:
        """Per destination: configured, breaker state, failures in a row, in flight, sent since start."""
        return {
            lane.destination.value: {
                "configured": lane.client is not None,
                "breaker": lane.breaker.state.value,
                "breaker_opened": lane.breaker.times_opened,
                "consecutive_failures": lane.breaker.consecutive_failures,
                "in_flight": len(lane.inflight),
                "paused_seconds": round(lane.pacer.paused_for(), 3),
                "sent": lane.sent,
                "held": lane.held,
            }
            for lane in self._lanes.values()
        }

    # -- MailerLite custom fields: MailerLite drops fields never created, so none is sent before ours exist --

    def _prepare_mailerlite(self) -> asyncio.Task[None] | None:
        """Hold the MailerLite lane and start ensuring our custom fields there; None when it is not configured."""
        lane = self._lanes[Destination.MAILERLITE]
        if lane.client is None or self._settings.mailerlite_api_key is None:
            return None
        lane.held = "checking that MailerLite has our custom fields"
        return asyncio.create_task(self._ensure_mailerlite_fields(lane), name="mailerlite-fields")

    async def _ensure_mailerlite_fields(self, lane: Lane) -> None:
        """Create the fields MailerLite lacks, retrying with backoff; release the lane once they all exist."""
        delay = FIELDS_RETRY_FIRST_SECONDS
        while True:
            try:
                created = await asyncio.to_thread(ensure_mailerlite_fields, self._settings)
            except (
                Exception
            ) as exc:  # MailerLite's refusal, a network error, or a bug: logged, and tried again
                lane.setup_failed = True
                lane.held = f"MailerLite custom fields could not be checked or created: {exc}"[:300]
                log.error(
                    "MailerLite deliveries held until our custom fields exist there; retrying (run "
                    "`attribution mailerlite setup-fields` to see the answer)",
                    extra={"error": str(exc)[:300], "retry_in_seconds": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, FIELDS_RETRY_MAX_SECONDS)
                continue
            if created:
                log.info("created MailerLite custom fields", extra={"created_fields": created})
            lane.held, lane.setup_failed = None, False
            self._wake.set()
            return

    async def _stop_preparing(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()
            await asyncio.gather(self._preparing, return_exceptions=True)
            self._preparing = None

    # -- dispatching --

    async def _dispatch(self) -> None:
        poll = self._settings.attribution_delivery_poll_seconds
        while not self._stopping:
            self._wake.clear()
            try:
                sleep = await self._claim_round(poll)
            except WriterStopped:
                return
            except StoreUnavailable:
                # The store cannot answer now (a full disk, PostgreSQL restarting): the writer (or the read) has said
                # so; nothing was leased, so try again shortly.
                sleep = min(poll, STORE_RETRY_SECONDS)
            except (duckdb.Error, psycopg.Error):
                # A failed claim rolled back and leased nothing; say so loudly and try again after a poll.
                log.exception("claiming deliveries failed")
                sleep = poll
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=sleep)

    async def _claim_round(self, poll: float) -> float:
        """Claim for every lane with room in one transaction; return how long to sleep unless woken."""
        sleep = poll
        if self._shared:
            await self._refresh_circuits(poll)
        limits: dict[str, int] = {}
        probes: set[Destination] = set()
        worth_it = False
        for lane in self._lanes.values():
            count, worth, probe = lane.claimable()
            if count and (not probe or lane.breaker.start_probe()):
                # A lane with some room rides along on another lane's claim: one transaction fills all.
                limits[lane.destination.value] = count
                worth_it = worth_it or worth
                if probe:
                    probes.add(lane.destination)
                continue
            not_before = lane.not_before - time.monotonic()
            for wait in (
                lane.breaker.seconds_to_probe(),
                lane.pacer.paused_for() or None,
                not_before if not_before > 0 else None,
            ):
                if wait is not None:
                    sleep = min(sleep, wait + 0.001)
        worth_it = worth_it or bool(self._urgent)  # a lead capture is waiting for one of them
        try:
            if worth_it and self._found_none and not self._urgent:
                # The last claim found nothing: look with a read first, so an idle worker commits nothing (the
                # replica publisher republishes after every commit); a row the read misses is claimed at the next
                # poll (or by another instance).
                worth_it = await asyncio.to_thread(
                    self._database.read, functools.partial(any_due, list(limits))
                )
        finally:
            if not worth_it:  # no claim: a probe slot taken above is given back, whatever stopped the round
                for destination in probes:
                    self._lanes[destination].breaker.probing = False
        if not worth_it:
            return sleep
        busy = frozenset(
            (lane.destination.value, event_id)
            for lane in self._lanes.values()
            for event_id in lane.inflight.values()
            if event_id is not None
        )
        inflight = frozenset(delivery for lane in self._lanes.values() for delivery in lane.inflight)
        paced = {
            lane.destination.value: lane.shared_interval
            for lane in self._lanes.values()
            if lane.shared_interval and lane.client is not None
        }
        request = ClaimRequest(
            utcnow(),
            limits,
            busy,
            tuple(self._urgent),
            lease=self._lease,
            inflight=inflight,
            paced=paced,
            horizon=PACING_HORIZON_SECONDS,
        )
        settled = {lane.destination: lane.settled() for lane in self._lanes.values()}
        try:
            claim: Claim = await self._database.writer.submit(claim_deliveries, request)
        except BaseException:
            for destination in probes:
                self._lanes[destination].breaker.probing = False
            raise
        claimed_at = time.monotonic()
        claimed = claim.deliveries
        self._found_none = not claimed
        got: Counter[str] = Counter(item.destination for item in claimed)
        for destination in probes:
            if not got[destination.value]:
                self._lanes[destination].breaker.probing = False  # nothing due to probe with yet
        for name, view in claim.lanes.items():
            lane = self._lanes[Destination(name)]
            before = settled[lane.destination]
            if view.probe or (before is not None and lane.settled() == before):
                probe = follow(lane, view, poll)
            else:  # a change of this worker's was still on its way: its own view is the newer one
                lane.breaker.probing, probe = False, False
            (probes.add if probe else probes.discard)(lane.destination)
        for item in claimed:
            lane = self._lanes[Destination(item.destination)]
            if item.delivery_id in lane.inflight:
                continue  # its lease ran out while it still waits here: it is not sent twice
            probe = lane.destination in probes
            self._urgent.discard(item.delivery_id)
            lane.inflight[item.delivery_id] = item.event_id
            due = claimed_at + item.send_in if item.send_in is not None else None
            task = asyncio.create_task(self._send(lane, item, probe, due))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if any(got[destination] >= limit for destination, limit in limits.items()):
            return 0.0  # there may be more due: look again as soon as there is room
        return sleep

    async def _refresh_circuits(self, poll: float) -> None:
        """Follow the shared state of circuits this worker holds open (at most once a poll): a worker with nothing
        due there would otherwise not hear that another instance's probe closed them."""
        stale = [
            lane.destination.value
            for lane in self._lanes.values()
            if lane.client is not None and lane.breaker.opened_at is not None and not lane.breaker.probing
        ]
        if not stale or time.monotonic() - self._circuits_read_at < poll:
            return
        self._circuits_read_at = time.monotonic()
        settled = {lane.destination: lane.settled() for lane in self._lanes.values()}
        views = await asyncio.to_thread(self._database.read, functools.partial(circuit_views, stale))
        for name, view in views.items():
            lane = self._lanes[Destination(name)]
            before = settled[lane.destination]
            if not lane.breaker.probing and before is not None and lane.settled() == before:
                follow(lane, view, poll)

    def _share(self, change: LaneChange) -> None:
        """Queue a change of what instances share about a destination (PostgreSQL), applied in order."""
        if self._shared and self._sharing is not None:
            self._lanes[Destination(change.destination)].changes_queued += 1
            self._lane_changes.put_nowait(change)

    async def _share_lane_changes(self) -> None:
        while True:
            change = await self._lane_changes.get()
            try:
                await asyncio.to_thread(self._database.read, functools.partial(record_lane_change, change))
            except (StoreUnavailable, psycopg.Error) as exc:
                # Only this instance then holds it: the others find the outage (or the pause) themselves.
                log.warning(
                    "a destination's shared state could not be recorded",
                    extra={
                        "destination": change.destination,
                        "change": change.change,
                        "error": str(exc)[:300],
                    },
                )
            finally:
                self._lanes[Destination(change.destination)].changes_written += 1
                self._lane_changes.task_done()

    async def _stop_sharing(self) -> None:
        if self._sharing is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lane_changes.join(), timeout=2.0)
        self._sharing.cancel()
        await asyncio.gather(self._sharing, return_exceptions=True)
        self._sharing = None

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # -- sending --

    async def _send(
        self, lane: Lane, claimed: ClaimedDelivery, probe: bool, due: float | None = None
    ) -> None:
        probe_told = False  # the shared circuit heard this probe's answer
        try:
            async with lane.semaphore:
                if not probe and lane.breaker.state is not BreakerState.CLOSED:
                    await self._give_back(claimed, Unclaimed(claimed.delivery_id, None, claimed.claim_token))
                    return
                paused = lane.pacer.paused_for()
                if paused > LONG_PAUSE_SECONDS:
                    not_before = utcnow() + timedelta(seconds=paused)
                    await self._give_back(
                        claimed, Unclaimed(claimed.delivery_id, not_before, claimed.claim_token)
                    )
                    return
                # Only a request waits for a rate-limit slot; a delivery gated by consent or configuration does not
                # (on PostgreSQL its slot was reserved by the claim, `due`, and is left unused).
                if lane.client is not None and send_time_gate(claimed, self._settings) is None:
                    wait = due - time.monotonic() if due is not None else 0.0
                    if lane.pacer.holds():
                        wait = max(wait, lane.pacer.reserve())
                    if wait > 0:
                        await asyncio.sleep(wait)
                result = await deliver_one(lane.client, claimed, settings=self._settings, now=utcnow())
            before = lane.breaker.state
            lane.breaker.record(result, probe=probe)
            self._log_breaker(lane, before)
            probe_told = self._share_breaker(lane, before, result, probe)
            lane.observe(result)
            if result.verdict is Verdict.RATE_LIMITED and result.retry_after:
                lane.pacer.pause(result.retry_after)
                self._share(LaneChange(lane.destination.value, "paused", result.retry_after))
            if result.attempted:
                lane.sent += 1
            outcome = settle(
                claimed, result, settings=self._settings, now=utcnow(), rng=self._rng, probe=probe
            )
            if not await self._recorder.record(outcome):
                self._log_refused(lane, claimed)
                return
            self._log_outcome(lane, claimed, outcome)
        finally:
            if probe:
                lane.breaker.probing = False
                if not probe_told:  # given back unsent, or cut off: another instance may probe
                    self._share(LaneChange(lane.destination.value, "probe_released"))
            lane.inflight.pop(claimed.delivery_id, None)
            for future in self._waiters.get(claimed.delivery_id, []):
                if not future.done():
                    future.set_result(None)
            self._wake.set()

    async def _give_back(self, claimed: ClaimedDelivery, unclaimed: Unclaimed) -> None:
        if not await self._recorder.record(unclaimed):
            self._log_refused(self._lanes[Destination(claimed.destination)], claimed)

    def _share_breaker(self, lane: Lane, before: BreakerState, result: AttemptResult, probe: bool) -> bool:
        """Tell other instances what this attempt did to the circuit (PostgreSQL); whether a probe's answer was."""
        if not self._shared:
            return False
        cooldown = self._settings.attribution_circuit_breaker_cooldown_seconds
        change = breaker_change(lane, before, result, probe=probe, cooldown=cooldown)
        if change is not None:
            self._share(change)
        return probe

    def _log_refused(self, lane: Lane, claimed: ClaimedDelivery) -> None:
        log.warning(
            "delivery outcome refused: its lease ran out and another claim holds the delivery now",
            extra={
                "delivery_id": str(claimed.delivery_id),
                "event_id": str(claimed.event_id) if claimed.event_id else None,
                "destination": lane.destination.value,
            },
        )

    def _log_outcome(self, lane: Lane, claimed: ClaimedDelivery, outcome: RecordedOutcome) -> None:
        if outcome.status != DeliveryStatus.DEAD and outcome.outcome not in _WORTH_LOGGING:
            return
        extra = {
            "delivery_id": str(claimed.delivery_id),
            "event_id": str(claimed.event_id) if claimed.event_id else None,
            "destination": lane.destination.value,
            "kind": claimed.kind,
            "status": outcome.status,
            "status_code": outcome.status_code,
        }
        if outcome.status == DeliveryStatus.DEAD:
            log.warning("delivery dead", extra=extra | {"reason": outcome.reason})
        else:
            log.info("delivery attempt failed", extra=extra | {"error": outcome.error})

    def _log_breaker(self, lane: Lane, before: BreakerState) -> None:
        after = lane.breaker.state
        extra = {"destination": lane.destination.value, "failures": lane.breaker.consecutive_failures}
        if before is BreakerState.CLOSED and after is not BreakerState.CLOSED:
            log.warning(
                "circuit opened: nothing is sent to this destination until a probe succeeds", extra=extra
            )
            if self._on_circuit_change is not None:
                self._on_circuit_change(lane.destination, True)
        elif before is not BreakerState.CLOSED and after is BreakerState.CLOSED:
            log.warning("circuit closed: the destination answers again", extra=extra)
            if self._on_circuit_change is not None:
                self._on_circuit_change(lane.destination, False)
