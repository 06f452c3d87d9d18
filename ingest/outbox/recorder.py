"""The delivery recorder: outcomes and given-back leases gathered and committed as one writer job at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ingest.outbox.leases import Flush, record_deliveries
from ingest.outbox.records import RecordedOutcome, Unclaimed
from ingest.store.writer import StoreUnavailable, Writer, WriterStopped

log = logging.getLogger(__name__)

RECORD_INTERVAL_SECONDS = 0.1  # outcomes are committed at most this often
RECORD_RETRY_SECONDS = 1.0  # how soon outcomes the store refused are tried again


class Recorder:
    """Gathers outcomes and given-back leases, committing each gathering as one writer job (group commit
    on top of the writer's, so a thousand sends a second cost a handful of transactions)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._pending: list[tuple[RecordedOutcome | Unclaimed, asyncio.Future[bool]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retrying = False  # the last flush found the store unable to write
        self._retry_at = 0.0

    def start(self) -> None:
        """Start the flushing task."""
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")

    async def record(self, item: RecordedOutcome | Unclaimed) -> bool:
        """Queue an outcome (or a given-back lease) and wait until it is committed; False when it was refused, as
        another claim holds the delivery's lease now (this one's ran out)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._ready.set()
        return await future

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
            refused = await self._writer.submit(record_deliveries, flush)
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
        for item, future in taken:
            if not future.done():
                future.set_result(item.delivery_id not in refused)

    @staticmethod
    def _fail(
        taken: list[tuple[RecordedOutcome | Unclaimed, asyncio.Future[bool]]], exc: BaseException
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
