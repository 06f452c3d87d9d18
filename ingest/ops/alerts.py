"""The alert monitor: turns changes of state into alerts, queued durably and sent to ATTRIBUTION_ALERT_WEBHOOK_URL.

What it watches, and when:
- a destination's circuit opening and closing, told by the delivery worker as it happens (`circuit_changed`);
- the success targets, evaluated on each replica as it is published (`evaluate_targets`): by the API on the
  embedded file, by `attribution warehouse` on PostgreSQL;
- deliveries going dead, counted every ATTRIBUTION_ALERT_DEAD_WINDOW_SECONDS into one summary (`check_dead`).

Each subject's last state lives in `alert_states`; an alert row is queued in the same writer transaction that
records a change, so a change alerts exactly once, across restarts too. The sender POSTs the oldest pending alert,
retrying with backoff while the receiver is down, so alerts arrive in the order their changes happened. Without a
webhook URL the states are still recorded (the dashboard reads them) but nothing is queued.

Every API process runs a monitor, and on PostgreSQL several instances share one queue: a change is recorded (and
alerted) by whichever instance moves the state first, one monitor summarises each dead-letter window (the cursor
moves by compare and set), and a sender claims an alert with a lease before it POSTs it, so one instance sends it.
An instance that dies mid-POST leaves its lease to run out (3 x ATTRIBUTION_ALERT_TIMEOUT_SECONDS); another then
sends it again with the same alert_id, which the receiver can drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import duckdb
import httpx
import psycopg

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.core.vocabulary import Destination
from ingest.ops.messages import circuit_alert, dead_alert, target_alert
from ingest.ops.repository import (
    AlertClaim,
    AlertOutcome,
    AlertStatus,
    DeadCounted,
    Observation,
    Observed,
    QueuedAlert,
    alert_states,
    changes,
    claim_alerts,
    dead_cursor,
    dead_since,
    next_alert,
    record_alert_outcomes,
    record_dead_counted,
    record_observations,
    release_alert_claims,
)
from ingest.ops.sender import post_alert
from ingest.reconcile.replica import ReplicaSnapshot
from ingest.store.database import Database
from ingest.store.writer import BatchHandler, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_POLL_SECONDS = 5.0  # the sender looks for alerts this often when nothing woke it
# A claim lasts this many POST timeouts: longer than one POST and its recording take, short enough that an alert
# claimed by an instance that died goes out soon after.
LEASE_TIMEOUTS = 3
# What a store read or write can raise besides the domain's own errors: the embedded file's and PostgreSQL's.
STORE_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, duckdb.Error, psycopg.Error)
CIRCUIT_CLOSED, CIRCUIT_OPEN = "closed", "open"
TARGET_MET, TARGET_MISSED = "met", "missed"


def circuit_subject(destination: Destination) -> str:
    """The alert_states subject of a destination's circuit."""
    return f"circuit:{destination.value}"


class AlertMonitor:
    """Watches circuits, targets and dead deliveries, and sends the alerts; one per API process."""

    def __init__(
        self, database: Database, settings: Settings, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._database = database
        self._settings = settings
        secret = settings.attribution_alert_webhook_url
        self._url = secret.get_secret_value() if secret is not None else None
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._observing: set[asyncio.Task[None]] = set()

    @property
    def queues_alerts(self) -> bool:
        """Whether a webhook is configured (otherwise states are recorded, nothing is sent)."""
        return self._url is not None

    def open_circuits(self) -> list[Destination]:
        """Destinations whose circuit was last recorded open (by a process that may have stopped since)."""
        states = self._database.read(alert_states)
        return [item for item in Destination if states.get(circuit_subject(item)) == CIRCUIT_OPEN]

    # -- lifecycle --

    async def start(self) -> None:
        """Start counting dead deliveries and, with a webhook configured, sending alerts."""
        self._loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self._tasks.append(asyncio.create_task(self._count_dead_forever(), name="alerts-dead-deliveries"))
        if self._url is not None:
            self._tasks.append(asyncio.create_task(self._send_forever(self._url), name="alerts-sender"))

    async def stop(self) -> None:
        """Stop; an alert not yet sent stays queued and goes out after the next start."""
        if self._stop is None:
            return
        self._stop.set()
        self._wake_sender()
        if self._observing:
            await asyncio.wait(set(self._observing), timeout=5)
        _, pending = await asyncio.wait(self._tasks, timeout=5) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()

    # -- observers --

    def circuit_changed(self, destination: Destination, opened: bool) -> None:
        """The delivery worker's hook: a circuit opened or closed (called on the event loop)."""
        now = self._clock()
        observation = Observation(
            subject=circuit_subject(destination),
            state=CIRCUIT_OPEN if opened else CIRCUIT_CLOSED,
            default=CIRCUIT_CLOSED,
            alert="circuit_open" if opened else "circuit_closed",
            payload=circuit_alert(destination, opened, now),
        )
        task = asyncio.get_running_loop().create_task(
            self._record(Observed((observation,), now, self.queues_alerts))
        )
        self._observing.add(task)
        task.add_done_callback(self._observing.discard)

    async def _record(self, observed: Observed) -> None:
        try:
            queued = await self._database.writer.submit(record_observations, observed)
        except STORE_ERRORS:
            log.exception(
                "recording an alert state failed",
                extra={"subjects": [o.subject for o in observed.observations]},
            )
            return
        if queued:
            self._wake_sender()

    def evaluate_targets(self, snapshot: ReplicaSnapshot) -> int:
        """The replica publisher's (or the warehouse's) hook: compare each success metric of the copy just published
        with its target; return alerts queued.

        A metric with nothing to count yet (denominator 0) is neither met nor missed, so it changes no state.
        """
        now = self._clock()
        observations = tuple(
            Observation(
                subject=f"target:{metric.metric}",
                state=TARGET_MET if metric.met else TARGET_MISSED,
                default=TARGET_MET,
                alert="target_met" if metric.met else "target_missed",
                payload=target_alert(metric, now),
            )
            for metric in snapshot.metrics
            if metric.denominator > 0
        )
        try:
            # Read first: an unchanged state commits nothing (each commit makes the publisher copy again).
            if not changes(self._database.read(alert_states), observations):
                return 0
            return self._submit_from_thread(
                record_observations, Observed(observations, now, self.queues_alerts)
            )
        except STORE_ERRORS as exc:  # evaluated again at the next publish
            log.warning("success target states not recorded", extra={"error": str(exc)})
            return 0

    def check_dead(self) -> int:
        """Summarise the deliveries that went dead since the last summary into one alert; return alerts queued."""
        now = self._clock()
        cursor_at = self._database.read(dead_cursor)
        if cursor_at is None:  # first run: what went dead before alerting existed is not news
            self._submit_from_thread(record_dead_counted, DeadCounted(now, None, now, self.queues_alerts))
            return 0
        summary = self._database.read(functools.partial(dead_since, cursor_at=cursor_at))
        if summary.total == 0 or summary.newest_at is None:
            return 0
        payload = dead_alert(summary.counts, cursor_at, now)
        counted = DeadCounted(summary.newest_at, payload, now, self.queues_alerts, previous=cursor_at)
        return self._submit_from_thread(record_dead_counted, counted)

    def _submit_from_thread(self, handler: BatchHandler[T, int], item: T) -> int:
        queued = self._database.writer.submit_sync(handler, item)
        if queued and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wake_sender)
        return queued

    # -- loops --

    def _wake_sender(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, woken early by a new alert or a stop."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))
        self._wake.clear()

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _count_dead_forever(self) -> None:
        assert self._stop is not None
        window = self._settings.attribution_alert_dead_window_seconds
        while not self._stopping():
            try:
                await asyncio.to_thread(self.check_dead)
            except STORE_ERRORS:
                log.exception("counting dead deliveries failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=window)

    async def _send_forever(self, url: str) -> None:
        timeout = self._settings.attribution_alert_timeout_seconds
        max_backoff = self._settings.attribution_alert_max_backoff_seconds
        async with httpx.AsyncClient(timeout=timeout) as client:
            while not self._stopping():
                try:
                    alert = await self._claim_next(timedelta(seconds=timeout * LEASE_TIMEOUTS))
                except STORE_ERRORS:
                    log.exception("reading the alert queue failed")
                    await self._pause(IDLE_POLL_SECONDS)
                    continue
                if isinstance(alert, float):
                    await self._pause(alert)
                    continue
                try:
                    outcome = await post_alert(client, url, alert, now=self._clock(), max_backoff=max_backoff)
                except asyncio.CancelledError:  # stopped mid-POST: let the next sender have it now
                    if alert.claim_id is not None:
                        with contextlib.suppress(StoreUnavailable):
                            self._database.writer.submit_nowait(release_alert_claims, alert.claim_id)
                    raise
                await self._record_outcome(alert, outcome)

    async def _claim_next(self, lease: timedelta) -> QueuedAlert | float:
        """The oldest pending alert, claimed for this sender; else how long to wait before looking again."""
        alert = await asyncio.to_thread(self._database.read, next_alert)
        if alert is None:
            return IDLE_POLL_SECONDS
        now = self._clock()
        wait = (alert.due_at() - now).total_seconds()
        if (
            wait > 0
        ):  # backing off, or another instance's sender holds it: look again then (or sooner if woken)
            return min(wait, IDLE_POLL_SECONDS) if alert.lease_until is not None else wait
        claim = AlertClaim(alert.alert_id, uuid.uuid4(), now, now + lease)
        claimed = await self._database.writer.submit(claim_alerts, claim)
        return IDLE_POLL_SECONDS / 10 if claimed is None else claimed  # taken by another sender meanwhile

    async def _record_outcome(self, alert: QueuedAlert, outcome: AlertOutcome) -> None:
        extra = {"alert_id": str(alert.alert_id), "alert": alert.payload.get("alert"), "error": outcome.error}
        try:
            recorded = await self._database.writer.submit(record_alert_outcomes, outcome)
        except STORE_ERRORS:
            log.exception("recording an alert attempt failed", extra={"alert_id": str(alert.alert_id)})
            await self._pause(IDLE_POLL_SECONDS)
            return
        if not recorded:
            log.warning("alert claim lost to another sender; its outcome is not recorded", extra=extra)
        elif outcome.status == AlertStatus.SENT:
            log.info("alert sent", extra=extra)
        elif outcome.status == AlertStatus.FAILED:
            log.error("alert refused by the webhook; not retried", extra=extra)
        else:
            log.warning("alert webhook unreachable; retrying", extra=extra | {"attempts": alert.attempts + 1})
