"""The delivery worker: an asyncio loop in the API process that claims due outbox rows through the writer,
sends them with per-destination concurrency, pacing and a circuit breaker, and records every attempt."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
from ingest.outbox.leases import (
    ClaimRequest,
    Flush,
    any_due,
    claim_deliveries,
    record_deliveries,
    release_all_deliveries,
)
from ingest.outbox.pacing import Pacer
from ingest.outbox.repository import ClaimedDelivery, RecordedOutcome, Unclaimed
from ingest.store.database import Database
from ingest.store.writer import StoreUnavailable, Writer, WriterStopped

log = logging.getLogger(__name__)

MAX_CLAIM = 1024  # most deliveries one destination holds claimed (sending or queued to send) at once
# Claim about this long's worth of sends: long enough that claims (a few table scans each) stay rare under
# load, short enough that a claimed delivery goes out soon after its consent was checked.
QUEUE_SECONDS = 1.0
PACING_HORIZON_SECONDS = 1.0  # a rate-limited destination claims only what it may send within this long
LONG_PAUSE_SECONDS = 1.0  # a claimed delivery facing a longer Retry-After pause goes back to the table
RECORD_INTERVAL_SECONDS = 0.1  # outcomes are committed at most this often
RECORD_RETRY_SECONDS = 1.0  # how soon outcomes the store refused are tried again
# Attempt outcomes logged besides a delivery going dead: failures it may still get over.
_WORTH_LOGGING = frozenset({DeliveryStatus.RETRYING, PROBE_FAILED, Verdict.RATE_LIMITED})
FIELDS_RETRY_FIRST_SECONDS = 1.0  # ensuring MailerLite's custom fields failed: first retry, doubling up to
FIELDS_RETRY_MAX_SECONDS = 60.0


# --- per-destination lanes -----------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One destination's client, limits and in-flight bookkeeping."""

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
        if self.held is not None or self.pacer.paused_for() > 0:
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


class _Recorder:
    """Gathers outcomes and given-back leases, committing each gathering as one writer job (group commit
    on top of the writer's, so a thousand sends a second cost a handful of transactions)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._pending: list[tuple[RecordedOutcome | Unclaimed, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retrying = False  # the last flush found the store unable to write
        self._retry_at = 0.0

    def start(self) -> None:
        """Start the flushing task."""
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")

    async def record(self, item: RecordedOutcome | Unclaimed) -> None:
        """Queue an outcome (or a given-back lease) and wait until it is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._ready.set()
        await future

    async def _run(self) -> None:
        last_flush = -RECORD_INTERVAL_SECONDS
        while True:
            await self._ready.wait()
            # At most one flush per interval: a flush costs a few table scans however many rows it holds, so
            # under load rows are gathered; after a quiet spell an outcome is committed at once.
            wait = max(last_flush + RECORD_INTERVAL_SECONDS, self._retry_at) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._ready.clear()
            last_flush = time.monotonic()
            await self._flush()

    async def _flush(self) -> None:
        taken, self._pending = self._pending, []
        if not taken:
            return
        flush = Flush(
            outcomes=tuple(item for item, _ in taken if isinstance(item, RecordedOutcome)),
            released=tuple(item for item, _ in taken if isinstance(item, Unclaimed)),
        )
        try:
            await self._writer.submit(record_deliveries, flush)
        except WriterStopped as exc:
            # Stopping: nothing of this flush is committed; its leases stay, so the next start sends those again.
            log.warning("delivery outcomes not recorded: the writer stopped", extra={"count": len(taken)})
            self._fail(taken, exc)
            return
        except StoreUnavailable:
            # The store cannot write now (a full disk): keep these outcomes and try again shortly, so a delivery
            # that was sent is recorded as soon as writes work again instead of waiting out its lease.
            if not self._retrying:
                log.warning(
                    "delivery outcomes wait for the store to write again", extra={"count": len(taken)}
                )
            self._retrying = True
            self._pending = taken + self._pending
            self._retry_at = time.monotonic() + RECORD_RETRY_SECONDS
            self._ready.set()
            return
        except (
            Exception
        ) as exc:  # a bug or a database error: logged, and the waiting sends are answered with it
            # (the recorder must outlive it, or every later send would wait for ever)
            log.exception("recording delivery outcomes failed", extra={"count": len(taken)})
            self._fail(taken, exc)
            return
        if self._retrying:
            log.warning("delivery outcomes recorded again", extra={"count": len(taken)})
            self._retrying = False
        for _, future in taken:
            if not future.done():
                future.set_result(None)

    @staticmethod
    def _fail(
        taken: list[tuple[RecordedOutcome | Unclaimed, asyncio.Future[None]]], exc: BaseException
    ) -> None:
        for _, future in taken:
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Commit what is still gathered (one try), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()
        # What the store still refuses is given up: those leases stay, and the next start sends them again with
        # the same idempotency key.
        left, self._pending = self._pending, []
        self._fail(
            left, StoreUnavailable("delivery outcomes could not be recorded before the worker stopped")
        )


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
        self._lanes: dict[Destination, _Lane] = {}
        for destination in Destination:
            concurrency, per_minute = destination_limits(settings, destination)
            self._lanes[destination] = _Lane(
                destination=destination,
                client=self._clients.get(destination),
                concurrency=concurrency,
                pacer=Pacer(per_minute),
                breaker=CircuitBreaker(
                    settings.attribution_circuit_breaker_threshold,
                    settings.attribution_circuit_breaker_cooldown_seconds,
                ),
                semaphore=asyncio.Semaphore(concurrency),
            )
        self._recorder = _Recorder(database.writer)
        self._lease = timedelta(seconds=settings.attribution_delivery_lease_seconds)
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[UUID, list[asyncio.Future[None]]] = {}
        self._urgent: set[UUID] = set()
        self._found_none = False  # the last claim leased nothing: the next one reads before it writes
        self._preparing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Release leases a dead process left behind, then start claiming."""
        released = await self._database.writer.submit(release_all_deliveries, None)
        if released:
            log.warning("released deliveries left in flight by a previous run", extra={"count": released})
        self._recorder.start()
        self._preparing = self._prepare_mailerlite()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="delivery-dispatcher")

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop claiming, let sends in flight finish for up to `grace_seconds`, then close the clients.

        A send cut off here keeps its lease, so the next start sends it again with the same idempotency key.
        """
        self._stopping = True
        self._wake.set()
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

    async def _ensure_mailerlite_fields(self, lane: _Lane) -> None:
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
                # The store cannot answer now (a full disk, PostgreSQL restarting): the writer has said so; nothing
                # was leased, so try again after a poll.
                sleep = poll
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
            for wait in (lane.breaker.seconds_to_probe(), lane.pacer.paused_for() or None):
                if wait is not None:
                    sleep = min(sleep, wait + 0.001)
        worth_it = worth_it or bool(self._urgent)  # a lead capture is waiting for one of them
        try:
            if worth_it and self._found_none and not self._urgent:
                # The last claim found nothing: look with a read first, so an idle worker commits nothing (the
                # replica publisher republishes after every commit). Only this worker claims, so a row the read
                # misses is simply claimed at the next poll.
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
        request = ClaimRequest(utcnow(), limits, busy, tuple(self._urgent), lease=self._lease)
        try:
            claimed = await self._database.writer.submit(claim_deliveries, request)
        except BaseException:
            for destination in probes:
                self._lanes[destination].breaker.probing = False
            raise
        self._found_none = not claimed
        got: Counter[str] = Counter(item.destination for item in claimed)
        for destination in probes:
            if not got[destination.value]:
                self._lanes[destination].breaker.probing = False  # nothing due to probe with yet
        for item in claimed:
            lane = self._lanes[Destination(item.destination)]
            if item.delivery_id in lane.inflight:
                continue  # its lease ran out while it still waits here: it is not sent twice
            probe = lane.destination in probes
            self._urgent.discard(item.delivery_id)
            lane.inflight[item.delivery_id] = item.event_id
            task = asyncio.create_task(self._send(lane, item, probe))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if any(got[destination] >= limit for destination, limit in limits.items()):
            return 0.0  # there may be more due: look again as soon as there is room
        return sleep

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # -- sending --

    async def _send(self, lane: _Lane, claimed: ClaimedDelivery, probe: bool) -> None:
        try:
            async with lane.semaphore:
                if not probe and lane.breaker.state is not BreakerState.CLOSED:
                    await self._recorder.record(Unclaimed(claimed.delivery_id))
                    return
                paused = lane.pacer.paused_for()
                if paused > LONG_PAUSE_SECONDS:
                    not_before = utcnow() + timedelta(seconds=paused)
                    await self._recorder.record(Unclaimed(claimed.delivery_id, not_before))
                    return
                # Only a request takes a rate-limit slot; a delivery gated by consent or configuration does not.
                if (
                    lane.client is not None
                    and lane.pacer.holds()
                    and send_time_gate(claimed, self._settings) is None
                ):
                    wait = lane.pacer.reserve()
                    if wait > 0:
                        await asyncio.sleep(wait)
                result = await deliver_one(lane.client, claimed, settings=self._settings, now=utcnow())
            before = lane.breaker.state
            lane.breaker.record(result, probe=probe)
            self._log_breaker(lane, before)
            lane.observe(result)
            if result.verdict is Verdict.RATE_LIMITED and result.retry_after:
                lane.pacer.pause(result.retry_after)
            if result.attempted:
                lane.sent += 1
            outcome = settle(
                claimed, result, settings=self._settings, now=utcnow(), rng=self._rng, probe=probe
            )
            await self._recorder.record(outcome)
            self._log_outcome(lane, claimed, outcome)
        finally:
            if probe:
                lane.breaker.probing = False
            lane.inflight.pop(claimed.delivery_id, None)
            for future in self._waiters.get(claimed.delivery_id, []):
                if not future.done():
                    future.set_result(None)
            self._wake.set()

    def _log_outcome(self, lane: _Lane, claimed: ClaimedDelivery, outcome: RecordedOutcome) -> None:
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

    def _log_breaker(self, lane: _Lane, before: BreakerState) -> None:
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
