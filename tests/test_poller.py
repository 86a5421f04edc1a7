"""The polling fallback: a startup check within the backoff, then one check per interval."""

from __future__ import annotations

import asyncio
import random

import pytest

from mirrorhook.poller import Poller
from mirrorhook.scheduler import Scheduler
from mirrorhook.trigger import Trigger


class CountedSleeps:
    """Records each delay and stops the poller after `limit` sleeps."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) > self.limit:
            raise asyncio.CancelledError
        await asyncio.sleep(0)


class Triggers:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def __call__(self, trigger: Trigger) -> None:
        self.reasons.append(str(trigger))


async def test_startup_check_then_polls_with_jitter() -> None:
    """docs/design.md#startup-check-and-polling: the first check comes within `backoff`, then
    every interval + jitter."""
    sleeps = CountedSleeps(limit=3)
    scheduler = Scheduler(Triggers(), backoff=30, sleep=sleeps)
    triggered: list[str] = []
    original = scheduler.trigger

    def spy(trigger: Trigger, *, delay: float | None = None) -> object:
        triggered.append(f"{trigger}@{delay}")
        return original(trigger, delay=delay)

    scheduler.trigger = spy  # type: ignore[method-assign,assignment]
    poller = Poller(
        scheduler, backoff=30, interval=3600, jitter=300, rng=random.Random(3), sleep=sleeps
    )
    with pytest.raises(asyncio.CancelledError):
        await poller.run()
    assert 0 <= sleeps.delays[0] <= 30
    assert all(3600 <= delay <= 3900 for delay in sleeps.delays[1:])
    assert triggered == ["startup check@0", "poll@0", "poll@0"]
    assert poller.next_at is not None


async def test_interval_zero_keeps_only_the_startup_check() -> None:
    """poll_interval = 0 disables the timer, not the startup check."""
    sleeps = CountedSleeps(limit=5)
    scheduler = Scheduler(Triggers(), backoff=0, sleep=sleeps)
    poller = Poller(scheduler, backoff=0, interval=0, jitter=300, sleep=sleeps)
    await poller.run()
    assert sleeps.delays == [0]
    assert poller.next_at is None
