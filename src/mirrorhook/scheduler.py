"""Turning triggers into syncs: one at a time, after a random backoff, at most one follow-up.

Announcements (through ``intake.py``), polls and the startup check all call
``Scheduler.trigger``; a single worker task
runs the syncs. Triggers that arrive while a sync waits are covered by it (it has not read
the upstream marker yet); triggers that arrive while a sync runs produce exactly one
follow-up sync, whatever their number (docs/design.md#coalescing).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mirrorhook.errors import SyncError
from mirrorhook.log import TreeLog
from mirrorhook.retry import Sleep
from mirrorhook.trigger import Trigger

logger = logging.getLogger(__name__)

RunSync = Callable[[Trigger], Awaitable[object]]


class Phase(enum.StrEnum):
    """What the worker is doing."""

    IDLE = "idle"
    WAITING = "waiting"
    SYNCING = "syncing"


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A new sync will start after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Queued:
    """A sync is already waiting or running; the trigger is covered by it or its follow-up."""


@dataclass(frozen=True, slots=True)
class _Request:
    trigger: Trigger
    delay: float


class Scheduler:
    """Serialises syncs of one tree and applies the random backoff before each."""

    def __init__(
        self,
        run_sync: RunSync,
        *,
        backoff: float,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        repo: str | None = None,
    ) -> None:
        self._log = TreeLog(logger, repo)
        self._run_sync = run_sync
        self._on_change = on_change
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._pending: _Request | None = None
        self._wake = asyncio.Event()
        self.phase = Phase.IDLE
        self.not_syncing = asyncio.Event()
        """Set while no sync runs (a reload waits on it before retiring this scheduler)."""
        self.not_syncing.set()
        self.starts_at: float | None = None
        """When the waiting sync starts (Unix time), while ``phase`` is ``WAITING``."""

    @property
    def pending(self) -> bool:
        """Whether a sync is queued (waiting for its backoff, or to follow the running one)."""
        return self._pending is not None

    def discard_pending(self) -> None:
        """Drop a queued sync (a reload hands the tree to a new scheduler, which checks it)."""
        self._pending = None

    def trigger(self, trigger: Trigger, *, delay: float | None = None) -> Scheduled | Queued:
        """Ask for a sync after ``delay`` seconds (default: random within the backoff)."""
        if self._pending is not None:
            self._log.debug("trigger (%s) covered by the sync already queued", trigger)
            return Queued()
        if delay is None:
            delay = self._rng.uniform(0, self._backoff)
        self._pending = _Request(trigger, delay)
        self._wake.set()
        if self.phase is Phase.SYNCING:
            self._log.info("trigger (%s) during a sync: one follow-up sync queued", trigger)
            return Queued()
        self._log.info("trigger (%s): sync scheduled in %.1f s", trigger, delay)
        return Scheduled(delay)

    async def run(self) -> None:
        """Run queued syncs until cancelled; a failed sync waits for the next trigger.

        Restartable: a sync queued when an earlier run ended is picked up.
        """
        self._enter(Phase.IDLE)
        if self._pending is not None:
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            request = self._pending
            if request is None:
                continue
            self._enter(Phase.WAITING, self._clock() + request.delay)
            try:
                await self._sleep(request.delay)
                self._pending = None
                self._enter(Phase.SYNCING)
                await self._run_sync(request.trigger)
            except SyncError:
                pass  # the sync engine logged and recorded it; wait for the next trigger
            except Exception as err:  # noqa: BLE001 - logged below, with the traceback at -v
                # A bug must not end the daemon's syncing for good: log it and carry on.
                self._log.error(
                    "unexpected error during a sync (%s): %r",
                    request.trigger,
                    err,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
            finally:
                self._enter(Phase.IDLE)

    def _enter(self, phase: Phase, starts_at: float | None = None) -> None:
        self.phase = phase
        if phase is Phase.SYNCING:
            self.not_syncing.clear()
        else:
            self.not_syncing.set()
        self.starts_at = starts_at
        self._on_change()
