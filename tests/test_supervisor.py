"""Supervised tasks: a task that stops is logged at once, restarted, and shown in /healthz."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mirrorhook import endpoints
from mirrorhook.metrics import Metrics
from mirrorhook.scheduler import Phase, Scheduler
from mirrorhook.supervisor import Supervisor
from mirrorhook.trigger import Trigger, Via
from tests.helpers import ClientFactory, until


class Gate:
    """A sleep that waits until the test opens it (so the 'down' window can be observed)."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.open = asyncio.Event()
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.waiting.set()
        await self.open.wait()
        self.open.clear()
        self.waiting.clear()


async def test_a_failed_task_is_logged_restarted_and_unhealthy_meanwhile(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that raises is logged at once with its name and error; /healthz answers 503
    naming it until it runs again, then 200; restarts back off 1 s, 2 s, 4 s…"""
    gate = Gate()
    supervisor = Supervisor(sleep=gate)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise OSError(28, "No space left on device")
        await asyncio.Event().wait()

    app = endpoints.make_app(endpoints.Endpoints(dict, Metrics(), supervisor))
    client = await aiohttp_client(app)
    task = asyncio.create_task(supervisor.keep("scheduler", flaky))
    await asyncio.wait_for(gate.waiting.wait(), 5)
    assert "task scheduler stopped (OSError: [Errno 28] No space left on device)" in caplog.text
    response = await client.get("/healthz")
    assert response.status == 503
    assert "scheduler" in (await response.json())["down"]
    gate.open.set()
    await until(lambda: len(gate.delays) == 2 and gate.waiting.is_set(), 5)
    gate.open.set()
    await until(lambda: runs == 3, 5)
    response = await client.get("/healthz")
    assert response.status == 200
    assert gate.delays == [1.0, 2.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_that_returns_is_restarted_unless_it_may_finish() -> None:
    gate = Gate()
    supervisor = Supervisor(sleep=gate)
    runs = 0

    async def returns() -> None:
        nonlocal runs
        runs += 1

    await supervisor.keep("poller", returns, may_finish=True)
    assert runs == 1
    task = asyncio.create_task(supervisor.keep("worker", returns))
    await asyncio.wait_for(gate.waiting.wait(), 5)
    assert supervisor.down == {"worker": "ended unexpectedly"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.down == {}


async def test_a_cancellation_escaping_from_inside_a_task_is_a_failure_not_a_shutdown() -> None:
    """A CancelledError that the task did not receive itself (a sub-task's, say) must not
    end it silently: it is restarted like any failure."""
    gate = Gate()
    supervisor = Supervisor(sleep=gate)
    runs = 0

    async def leaks_a_cancellation() -> None:
        nonlocal runs
        runs += 1
        inner = asyncio.create_task(asyncio.sleep(10))
        inner.cancel()
        await inner

    task = asyncio.create_task(supervisor.keep("worker", leaks_a_cancellation))
    await asyncio.wait_for(gate.waiting.wait(), 5)
    assert "worker" in supervisor.down
    gate.open.set()
    await until(lambda: runs == 2, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_warnings_are_logged_once_until_cleared(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    supervisor = Supervisor()
    for _ in range(3):
        supervisor.warn("state notes", "cannot write /x: No space left on device")
    supervisor.clear("state notes")
    supervisor.clear("state notes")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "state notes: cannot write /x: No space left on device",
        "state notes: working again",
    ]
    assert supervisor.healthy


async def test_a_restarted_scheduler_runs_the_sync_that_was_queued(tmp_path: Path) -> None:
    """The scheduler's task ends while a sync is queued (a bug, say): once restarted, the
    queued sync runs instead of every later trigger answering 'queued' for ever."""
    synced: list[str] = []
    notes = 0

    def on_change() -> None:
        nonlocal notes
        notes += 1
        if notes == 2:  # the note of the first wait fails
            raise OSError(28, "No space left on device")

    async def run_sync(trigger: Trigger) -> None:
        synced.append(trigger.detail)

    scheduler = Scheduler(run_sync, backoff=0, on_change=on_change)
    first = asyncio.create_task(scheduler.run())
    scheduler.trigger(Trigger(Via.WEBHOOK, "webhook 1"))
    with pytest.raises(OSError, match="No space left"):
        await asyncio.wait_for(first, 5)
    assert scheduler.pending
    restarted = asyncio.create_task(scheduler.run())
    await until(lambda: synced == ["webhook 1"], 5)
    await until(lambda: scheduler.phase is Phase.IDLE, 5)
    scheduler.trigger(Trigger(Via.WEBHOOK, "webhook 2"))
    await until(lambda: synced == ["webhook 1", "webhook 2"], 5)
    restarted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await restarted
