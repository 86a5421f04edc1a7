"""The host's sync slots: at most ``max_syncs`` rsync syncs at once, all trees together.

A mirror host's link and disks are shared by its repositories; forty of them syncing at
once would saturate both. Every sync of ``mirrorhook serve`` takes a slot for its whole
run; syncs that find none free wait in the order they asked (asyncio's semaphore wakes its
waiters first come, first served), and show as ``waiting`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class SyncSlots:
    """At most ``size`` holders at once, served in the order they came."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = asyncio.Semaphore(size)
        self.waiting = 0
        """Syncs waiting for a slot right now."""

    @contextlib.asynccontextmanager
    async def hold(
        self,
        on_wait: Callable[[], None] = lambda: None,
        on_slot: Callable[[], None] = lambda: None,
    ) -> AsyncIterator[None]:
        """Hold a slot for the block; when none is free, call ``on_wait()`` before waiting
        for one and ``on_slot()`` once it is had (or the wait is cancelled)."""
        if self._free.locked():
            self.waiting += 1
            on_wait()
            try:
                await self._free.acquire()
            finally:
                self.waiting -= 1
                on_slot()
        else:
            await self._free.acquire()
        try:
            yield
        finally:
            self._free.release()
