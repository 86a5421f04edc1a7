"""The polling fallback: a startup check, then a check every ``poll_interval``.

See docs/design.md#startup-check-and-polling.

A lost webhook thus costs at most one poll interval, and a mirror that was down during a
publish catches up shortly after it starts. The poller only triggers; the sync engine
compares markers and transfers nothing when they are equal.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from mirrorhook.log import TreeLog
from mirrorhook.retry import Sleep
from mirrorhook.scheduler import Scheduler
from mirrorhook.trigger import POLL, STARTUP

logger = logging.getLogger(__name__)


class Poller:
    """Triggers the scheduler once at start (within ``backoff``) and then on a timer."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        backoff: float,
        interval: float,
        jitter: float,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        start_after: float = 0.0,
        on_change: Callable[[], None] = lambda: None,
        repo: str | None = None,
    ) -> None:
        self._log = TreeLog(logger, repo)
        self._scheduler = scheduler
        self._start_after = start_after
        self._on_change = on_change
        self._backoff = backoff
        self._interval = interval
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self.next_at: float | None = None
        """When the next check is due (Unix time); ``None`` once polling is disabled."""

    async def run(self) -> None:
        """Check at start, then poll forever (or stop after the start check if disabled)."""
        await self._wait(self._start_after + self._rng.uniform(0, self._backoff))
        self._scheduler.trigger(STARTUP, delay=0)
        if self._interval <= 0:
            self._log.info("polling disabled (poll_interval = 0): relying on announcements")
            self.next_at = None
            self._on_change()
            return
        while True:
            await self._wait(self._interval + self._rng.uniform(0, self._jitter))
            self._scheduler.trigger(POLL, delay=0)

    async def _wait(self, delay: float) -> None:
        self.next_at = self._clock() + delay
        self._on_change()
        await self._sleep(delay)
