"""The scheduler: one sync at a time, backoff before each, at most one follow-up
(docs/design.md#coalescing)."""

from __future__ import annotations

import asyncio
import random

import pytest

from mirrorhook.errors import SyncError
from mirrorhook.scheduler import Phase, Queued, Scheduled, Scheduler
from mirrorhook.trigger import Trigger, Via


class Recorder:
    """Stands in for the sync engine (its own tests use real rsync); each sync waits for
    `release` so a test can act while one is running."""

    def __init__(self, *, fail: bool = False) -> None:
        self.runs: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, trigger: Trigger) -> None:
        self.runs.append(trigger.detail)
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise SyncError("upstream unreachable")


class Sleeps:
    """Records the delays the scheduler waits, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def phase_of(scheduler: Scheduler) -> Phase:
    """Read the phase afresh (keeps mypy from narrowing it across awaits)."""
    return scheduler.phase


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_trigger_schedules_after_a_random_backoff() -> None:
    """A trigger on an idle scheduler waits a random [0, backoff] delay, then syncs."""
    recorder, sleeps = Recorder(), Sleeps()
    recorder.release.set()
    scheduler = Scheduler(recorder, backoff=30, rng=random.Random(7), sleep=sleeps)
    outcome = scheduler.trigger(Trigger(Via.COMMAND, "webhook"))
    assert isinstance(outcome, Scheduled)
    assert 0 <= outcome.delay <= 30
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run())
        await settle()
        task.cancel()
    assert recorder.runs == ["webhook"]
    assert sleeps.delays == [outcome.delay]


async def test_explicit_delay_overrides_the_backoff() -> None:
    """Polls pass delay=0: they are already spread by their own jitter."""
    scheduler = Scheduler(Recorder(), backoff=30, sleep=Sleeps())
    assert scheduler.trigger(Trigger(Via.COMMAND, "poll"), delay=0) == Scheduled(0)


async def test_triggers_while_waiting_are_covered_by_the_waiting_sync() -> None:
    """The waiting sync has not read the upstream marker yet: one sync serves them all."""
    recorder = Recorder()
    recorder.release.set()
    gate = asyncio.Event()

    async def held_sleep(_seconds: float) -> None:
        await gate.wait()

    scheduler = Scheduler(recorder, backoff=5, sleep=held_sleep)
    assert isinstance(scheduler.trigger(Trigger(Via.COMMAND, "first")), Scheduled)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run())
        await settle()
        assert phase_of(scheduler) is Phase.WAITING
        assert all(
            isinstance(scheduler.trigger(Trigger(Via.COMMAND, f"t{i}")), Queued) for i in range(50)
        )
        gate.set()
        await settle()
        task.cancel()
    assert recorder.runs == ["first"]


async def test_many_triggers_during_a_sync_give_exactly_one_follow_up() -> None:
    """200 triggers while a sync runs produce one follow-up sync, never more."""
    recorder, sleeps = Recorder(), Sleeps()
    scheduler = Scheduler(recorder, backoff=10, rng=random.Random(1), sleep=sleeps)
    scheduler.trigger(Trigger(Via.COMMAND, "first"))
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run())
        await recorder.started.wait()
        assert phase_of(scheduler) is Phase.SYNCING
        outcomes = [scheduler.trigger(Trigger(Via.COMMAND, f"during {i}")) for i in range(200)]
        assert all(isinstance(outcome, Queued) for outcome in outcomes)
        recorder.release.set()
        await settle()
        task.cancel()
    assert recorder.runs == ["first", "during 0"]
    assert len(sleeps.delays) == 2, "the follow-up waits its own backoff"
    assert all(0 <= delay <= 10 for delay in sleeps.delays)


async def test_a_failed_sync_does_not_stop_the_scheduler() -> None:
    """After a SyncError the scheduler waits for the next trigger and runs it."""
    recorder = Recorder(fail=True)
    recorder.release.set()
    scheduler = Scheduler(recorder, backoff=0, sleep=Sleeps())
    scheduler.trigger(Trigger(Via.COMMAND, "first"))
    async with asyncio.TaskGroup() as group:
        task = group.create_task(scheduler.run())
        await settle()
        assert phase_of(scheduler) is Phase.IDLE
        assert isinstance(scheduler.trigger(Trigger(Via.COMMAND, "second")), Scheduled)
        await settle()
        task.cancel()
    assert recorder.runs == ["first", "second"]


async def test_cancel_during_the_backoff_runs_no_sync() -> None:
    """Shutdown during the backoff (docs/design.md#shutdown) cancels the pending sync."""
    recorder = Recorder()
    scheduler = Scheduler(recorder, backoff=30, sleep=asyncio.sleep)
    scheduler.trigger(Trigger(Via.COMMAND, "webhook"), delay=30)
    task = asyncio.create_task(scheduler.run())
    await settle()
    assert phase_of(scheduler) is Phase.WAITING
    assert scheduler.starts_at is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.runs == []
    assert phase_of(scheduler) is Phase.IDLE
