"""The host's sync slots: at most ``max_syncs`` rsync syncs at once, all trees together.

A mirror host's link and disks are shared by its repositories; forty of them syncing at
once would saturate both. Every sync of ``mirrorhook serve`` takes a slot for its whole
run; syncs that find none free wait in the order they asked (first come, first served)
and show as ``waiting`` meanwhile. A reload may change the number of slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class SyncSlots:
    """At most ``size`` holders at once, served in the order they came; resizable."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Syncs waiting for a slot right now."""
        return sum(not waiter.done() for waiter in self._waiters)

    def resize(self, size: int) -> None:
        """Allow ``size`` holders from now on: waiters go ahead as room appears; holders
        beyond a smaller size finish their syncs, and no new one starts until below it."""
        self.size = size
        self._wake()

    @contextlib.asynccontextmanager
    async def hold(
        self,
        on_wait: Callable[[], None] = lambda: None,
        on_slot: Callable[[], None] = lambda: None,
    ) -> AsyncIterator[None]:
        """Hold a slot for the block; when none is free, call ``on_wait()`` before waiting
        for one and ``on_slot()`` once it is had (or the wait is cancelled)."""
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1
        else:
            on_wait()
            try:
                await self._wait()
            finally:
                on_slot()
        try:
            yield
        finally:
            self.in_use -= 1
            self._wake()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is counted for us when we are woken
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_use -= 1  # woken and cancelled at once: give the slot on
                self._wake()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
