"""The single writer of a process: one thread that commits concurrent units of work in shared transactions, on the
embedded DuckDB file or on a PostgreSQL connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import duckdb
import psycopg

from ingest.core.errors import DomainError

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - item type of a batch handler
R = TypeVar("R")

# A batch handler applies many items of one kind inside the writer's open transaction. It returns one
# result per item, in order; a DomainError result refuses that item alone and must not have written anything.
# The connection is DuckDB's, or on PostgreSQL a `postgres.PgConnection` speaking the same methods.
BatchHandler = Callable[[Any, Sequence[I]], Sequence[R | DomainError]]


class StoreUnavailable(Exception):
    """The store cannot write now (disk full, read-only, an I/O error): nothing was written; try again later."""


class WriterStopped(StoreUnavailable):
    """The writer is not running, so nothing can be committed."""


# Errors that say the storage failed, not the item: retrying the batch's jobs one by one would fail the same way.
# On PostgreSQL that is a lost or refused connection (the server restarting, the network): psycopg's
# OperationalError; the writer's connection reconnects at the next batch.
_STORE_FAULTS: tuple[type[BaseException], ...] = (
    duckdb.IOException,
    duckdb.PermissionException,
    OSError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    StoreUnavailable,  # the writer's connection could not be opened again
)
# An item's fault found only at commit (a deferred constraint).
_COMMIT_ITEM_FAULTS: tuple[type[BaseException], ...] = (duckdb.ConstraintException, psycopg.IntegrityError)
# A unique key another instance committed first (PostgreSQL only: the embedded file has one writer).
_RACES: tuple[type[BaseException], ...] = (psycopg.errors.UniqueViolation,)
_RACE_RETRIES = 2
# A transaction PostgreSQL rolled back to settle a conflict with another instance's (a deadlock between two
# batches that lock the same rows in another order, a serialization failure): nothing of it was written, so the
# whole batch runs again. Checked before _STORE_FAULTS: psycopg makes them OperationalErrors too.
_CONFLICTS: tuple[type[BaseException], ...] = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.TransactionRollback,
)
_CONFLICT_RETRIES = 3
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (duckdb.Error, psycopg.Error)


@dataclass
class _Job:
    handler: BatchHandler[Any, Any]
    item: Any
    done: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None
    raced: int = 0  # times it lost a race to another instance's commit and was run again

    def take(self) -> bool:
        """Whether the job still wants doing; once taken, a thread-side future can no longer be cancelled."""
        if isinstance(self.done, Future):
            return self.done.set_running_or_notify_cancel()
        return not self.done.cancelled()


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in outcomes:
        if future.done():
            continue  # the caller gave up after its job was taken
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


_STOP = object()

# Under load, the callers answered by the previous commit come back a request later, one event-loop turn apart:
# without waiting for them a busy API alternates two half-size batches, and a batch's statements cost nearly the
# same whatever its size. So a writer whose previous batch was shared waits for as many jobs as it just answered
# (besides those already queued), as long as they keep arriving within the gap, and at most the cap in all.
LINGER_GAP_SECONDS = 0.005
LINGER_MAX_SECONDS = 0.030


class Writer:
    """Group commit: jobs queued while a transaction commits share the next one, and each is answered after it."""

    def __init__(
        self,
        conn: Any,
        *,
        name: str = "duckdb-writer",
        max_batch: int = 512,
        linger_gap: float = LINGER_GAP_SECONDS,
        linger_max: float = LINGER_MAX_SECONDS,
    ) -> None:
        self._conn = conn
        self._name = name
        self._max_batch = max_batch
        self._linger_gap = linger_gap
        self._linger_max = linger_max
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        # While the writer lingers: how many queued jobs complete its batch, and the bell the submitter rings then.
        self._wanted: int | None = None
        self._bell = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches_committed = 0
        self.jobs_committed = 0
        self._last_fault_at: float | None = None  # time.monotonic() of the last storage fault
        self.last_fault: str | None = None
        # Told (jobs, seconds from begin to committed) after each commit, on the writer thread; must be quick.
        self.observe_commit: Callable[[int, float], None] | None = None

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the queued jobs, then stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._bell.set()
            self._thread.join()
            self._thread = None

    def close_connection(self) -> None:
        """Close the writer's connection (after stop())."""
        with contextlib.suppress(*_DRIVER_ERRORS):
            self._conn.close()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def faulted_within(self, seconds: float) -> bool:
        """Whether a write failed for the storage's sake (not an item's) in the last `seconds`."""
        return self._last_fault_at is not None and time.monotonic() - self._last_fault_at < seconds

    def submit_nowait(self, handler: BatchHandler[I, R], item: I) -> Future[R]:
        """Queue one item and return the future answered once its transaction has committed."""
        future: Future[R] = Future()
        self._put(_Job(handler, item, future))
        return future

    async def submit(self, handler: BatchHandler[I, R], item: I) -> R:
        """Queue one item and wait, without blocking the event loop, until it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._put(_Job(handler, item, future, loop))
        return await future

    def _put(self, job: _Job) -> None:
        if not self.running:
            raise WriterStopped("the database writer is not running")
        self._queue.put(job)
        wanted = self._wanted
        if wanted is not None and self._queue.qsize() >= wanted:
            self._wanted = None
            self._bell.set()

    def submit_sync(self, handler: BatchHandler[I, R], item: I) -> R:
        """Queue one item and block until it is committed (CLI and worker threads)."""
        return self.submit_nowait(handler, item).result()

    def _run(self) -> None:
        stopping = False
        answered = 0  # jobs in the previous batch: under load, their callers come back with their next job
        while not stopping:
            try:
                first, waiting = self._queue.get_nowait(), True
            except queue.Empty:
                first, waiting = self._queue.get(), False
            if first is _STOP:
                break
            taken = [cast(_Job, first)]
            stopping = self._drain(taken)
            # Only linger under load (the previous batch was shared): a lone caller is not kept waiting. Jobs that
            # were waiting when the last batch ended come from other callers; those just answered come on top.
            if answered > 1 and not stopping:
                expected = min(self._max_batch, (len(taken) if waiting else 0) + answered)
                stopping = self._linger(taken, expected=expected)
            # A job whose caller gave up before it started is dropped; once running it can't be cancelled.
            jobs = [job for job in taken if job.take()]
            answered = len(jobs)
            if jobs:
                self._run_batch(jobs)

    def _drain(self, taken: list[_Job]) -> bool:
        """Add the jobs already queued to `taken`; whether a stop was queued among them."""
        while len(taken) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            taken.append(cast(_Job, nxt))
        return False

    def _linger(self, taken: list[_Job], *, expected: int) -> bool:
        """Add jobs until `expected` are taken, while they keep arriving within the gap, up to the cap.

        The writer is not woken by each job: the submitter whose job completes the batch rings the bell, and
        otherwise the writer looks once per gap whether any arrived. Waking it for every job handed the GIL back and
        forth with the event loop (two context switches a request on the hot path). Returns whether a stop arrived.
        """
        deadline = time.monotonic() + self._linger_max
        while len(taken) < expected:
            wait = min(self._linger_gap, deadline - time.monotonic())
            if wait <= 0:
                return False
            self._bell.clear()
            self._wanted = expected - len(taken)
            if self._queue.qsize() < self._wanted:  # a job queued before _wanted was set is counted here
                self._bell.wait(wait)
            self._wanted = None
            had = len(taken)
            if self._drain(taken):
                return True
            if len(taken) == had:
                return False  # none arrived within the gap
        return False

    def _run_batch(self, jobs: list[_Job], conflicts: int = 0) -> None:
        groups: dict[BatchHandler[Any, Any], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.handler, []).append(job)
        outcomes: list[tuple[_Job, Any]] = []
        started = time.perf_counter()
        try:
            self._conn.begin()
            for handler, group in groups.items():
                results = handler(self._conn, [job.item for job in group])
                outcomes.extend(zip(group, results, strict=True))
        except Exception as exc:
            self._rollback()
            if isinstance(exc, _CONFLICTS) and conflicts < _CONFLICT_RETRIES:
                log.info(
                    "batch rolled back by a conflict with another instance; run again",
                    extra={"error": repr(exc)},
                )
                self._run_batch(jobs, conflicts + 1)
            elif isinstance(exc, _STORE_FAULTS):
                self._fault(jobs, exc)
            else:
                self._refuse_alone(jobs, exc)
            return
        try:
            self._conn.commit()
        except _COMMIT_ITEM_FAULTS as exc:  # an item's fault found at commit: retried job by job as above
            self._rollback()
            self._refuse_alone(jobs, exc)
            return
        except (
            _DRIVER_ERRORS
        ) as exc:  # every statement went through: the storage refused the commit (disk full)
            self._rollback()
            self._fault(jobs, exc)
            return
        if self._last_fault_at is not None:
            log.warning("store writes again", extra={"after": self.last_fault})
            self._last_fault_at = None
            self.last_fault = None
        self.batches_committed += 1
        self.jobs_committed += len(jobs)
        self._answer(outcomes)
        if self.observe_commit is not None:
            try:  # metrics only: a failure here must never leave a committed batch unanswered or stop the writer
                self.observe_commit(len(jobs), time.perf_counter() - started)
            except Exception:
                log.exception("recording the writer's commit metrics failed")

    def _refuse_alone(self, jobs: list[_Job], exc: BaseException) -> None:
        """An item's fault: a lone job is answered with it; in a batch, one bad job must not sink its batch-mates,
        so each is retried in its own transaction."""
        if len(jobs) == 1:
            job = jobs[0]
            if isinstance(exc, _RACES) and job.raced < _RACE_RETRIES:
                # Another instance committed the same key between this job's look-up and its insert (PostgreSQL
                # waits for that commit, then refuses): run it again, and its look-up now finds the row.
                job.raced += 1
                self._run_batch([job])
                return
            log.warning("write failed", extra={"error": repr(exc)})
            self._answer([(job, exc)])
            return
        for job in jobs:
            self._run_batch([job])

    def _fault(self, jobs: list[_Job], exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:300]
        if self._last_fault_at is None:
            log.error("store cannot write", extra={"error": reason})
        self._last_fault_at, self.last_fault = time.monotonic(), reason
        unavailable = StoreUnavailable(f"the database cannot write now ({reason}); try again shortly")
        self._answer([(job, unavailable) for job in jobs])

    def _answer(self, outcomes: list[tuple[_Job, Any]]) -> None:
        # One wake-up per event loop for the whole batch, not one per job: the hand-off is on the hot path.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, outcome in outcomes:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append((cast(asyncio.Future[Any], job.done), outcome))
            elif isinstance(outcome, BaseException):
                job.done.set_exception(outcome)
            else:
                job.done.set_result(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed while its jobs were in flight
                loop.call_soon_threadsafe(_settle, settled)

    def _rollback(self) -> None:
        # The failed statement (or commit) may already have ended the transaction.
        with contextlib.suppress(*_DRIVER_ERRORS):
            self._conn.rollback()
