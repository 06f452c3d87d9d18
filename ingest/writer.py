"""The single DuckDB writer: one thread that commits concurrent units of work in shared transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import duckdb

from ingest.errors import DomainError

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - item type of a batch handler
R = TypeVar("R")

# A batch handler applies many items of one kind inside the writer's open transaction. It returns one
# result per item, in order; a DomainError result refuses that item alone and must not have written anything.
BatchHandler = Callable[[duckdb.DuckDBPyConnection, Sequence[I]], Sequence[R | DomainError]]


class WriterStopped(Exception):
    """The writer is not running, so nothing can be committed."""


@dataclass
class _Job:
    handler: BatchHandler[Any, Any]
    item: Any
    done: Future[Any] = field(default_factory=Future)


_STOP = object()


class Writer:
    """Group commit: jobs queued while a transaction commits share the next one, and each is answered after it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, *, max_batch: int = 512) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches_committed = 0
        self.jobs_committed = 0

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="duckdb-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the queued jobs, then stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def submit_nowait(self, handler: BatchHandler[I, R], item: I) -> Future[R]:
        """Queue one item and return the future answered once its transaction has committed."""
        if not self.running:
            raise WriterStopped("the database writer is not running")
        job = _Job(handler, item)
        self._queue.put(job)
        return cast(Future[R], job.done)

    async def submit(self, handler: BatchHandler[I, R], item: I) -> R:
        """Queue one item and wait, without blocking the event loop, until it is committed."""
        return await asyncio.wrap_future(self.submit_nowait(handler, item))

    def submit_sync(self, handler: BatchHandler[I, R], item: I) -> R:
        """Queue one item and block until it is committed (CLI and worker threads)."""
        return self.submit_nowait(handler, item).result()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            taken = [cast(_Job, first)]
            while len(taken) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                taken.append(cast(_Job, nxt))
            # A job whose caller gave up before it started is dropped; once running it can't be cancelled.
            jobs = [job for job in taken if job.done.set_running_or_notify_cancel()]
            if jobs:
                self._run_batch(jobs)

    def _run_batch(self, jobs: list[_Job]) -> None:
        groups: dict[BatchHandler[Any, Any], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.handler, []).append(job)
        outcomes: list[tuple[_Job, Any]] = []
        try:
            self._conn.begin()
            for handler, group in groups.items():
                results = handler(self._conn, [job.item for job in group])
                outcomes.extend(zip(group, results, strict=True))
            self._conn.commit()
        except Exception as exc:
            self._rollback()
            if len(jobs) == 1:
                log.warning("write failed", extra={"error": repr(exc)})
                jobs[0].done.set_exception(exc)
                return
            # One bad job must not sink its batch-mates: retry each in its own transaction.
            for job in jobs:
                self._run_batch([job])
            return
        self.batches_committed += 1
        self.jobs_committed += len(jobs)
        for job, result in outcomes:
            if isinstance(result, DomainError):
                job.done.set_exception(result)
            else:
                job.done.set_result(result)

    def _rollback(self) -> None:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(duckdb.TransactionException):
            self._conn.rollback()
