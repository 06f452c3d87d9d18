"""Wake-ups across instances (PostgreSQL): deliveries committed by any instance wake every instance's worker.

A statement trigger on `deliveries` (migration 008) NOTIFYs CHANNEL when a transaction that inserted deliveries
commits (one notification per transaction: PostgreSQL folds repeats). Each worker LISTENs on a connection of its own
and wakes NOTIFY_GRACE_SECONDS later: the instance that captured the lead has claimed it by then (its own wake-up is
immediate, and lead capture waits for its MailerLite and CRM sends), so the others' look finds nothing to take
unless that instance could not send it. Polling stays as the fallback (retries coming due notify nobody, and a
listener that lost its connection listens again). Measured by bench/wakeups.py: README "Running on PostgreSQL".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "attribution_deliveries"
NOTIFY_GRACE_SECONDS = 0.1
RELISTEN_SECONDS = 1.0  # after the listening connection failed
CONNECT_TIMEOUT_SECONDS = 10


class Wakeups:
    """LISTEN for deliveries other instances commit and call `wake` (coalesced, after the grace) for them."""

    def __init__(self, url: str, wake: Callable[[], None], *, grace: float = NOTIFY_GRACE_SECONDS) -> None:
        self._url = url
        self._wake = wake
        self._grace = grace
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.TimerHandle | None = None
        self.listening = False
        self.notified = 0

    def start(self) -> None:
        """Start listening (on the running event loop)."""
        self._task = asyncio.create_task(self._listen_forever(), name="delivery-wakeups")

    async def stop(self) -> None:
        """Stop listening."""
        if self._pending is not None:
            self._pending.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen_forever(self) -> None:
        failing = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                )
            except psycopg.Error as exc:
                if not failing:
                    log.warning(
                        "delivery wake-ups wait for PostgreSQL; polling meanwhile",
                        extra={"error": str(exc)[:300]},
                    )
                failing = True
                await asyncio.sleep(RELISTEN_SECONDS)
                continue
            try:
                await conn.execute(f"listen {CHANNEL}")
                self.listening, failing = True, False
                self._schedule()  # what was committed while nobody listened
                async for _ in conn.notifies():
                    self.notified += 1
                    self._schedule()
            except psycopg.Error as exc:
                log.warning(
                    "delivery wake-ups lost their connection; polling meanwhile",
                    extra={"error": str(exc)[:300]},
                )
            finally:
                self.listening = False
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            await asyncio.sleep(RELISTEN_SECONDS)

    def _schedule(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self._grace, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._wake()
