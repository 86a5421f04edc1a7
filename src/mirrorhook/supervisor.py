"""Keeping the daemon's long-running tasks alive, and knowing when they are not.

Every background task of ``mirrorhook serve`` (the sync scheduler, the poller, each
delivery worker, the marker watcher, the record writer) runs under ``Supervisor.keep``. A
task that ends for any reason but shutdown is logged at once and restarted after a short,
growing delay; while it is down ``/healthz`` answers 503 and names it. Problems that do not
stop a task (a state note that cannot be written) are ``warnings``: logged when they start
and when they end, shown in ``/healthz`` and ``/v1/status``, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mirrorhook.retry import Sleep

logger = logging.getLogger(__name__)

FIRST_RESTART = 1.0
MAX_RESTART = 60.0
"""A task that keeps failing is restarted after 1 s, 2 s, 4 s… at most a minute apart."""
HEALTHY_RUN = 60.0
"""A task that ran this long before failing starts again from the first delay."""


class Supervisor:
    """Runs tasks that must not end, and keeps what is wrong with the daemon right now."""

    def __init__(self, *, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self.down: dict[str, str] = {}
        """Tasks that ended and wait to be restarted, with why they ended."""
        self.warnings: dict[str, str] = {}
        """Problems that stop nothing but that an operator should see."""

    @property
    def healthy(self) -> bool:
        """Whether every supervised task is running."""
        return not self.down

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` and ``/v1/status`` show."""
        return {
            "status": "ok" if self.healthy else "degraded",
            "down": dict(self.down),
            "warnings": dict(self.warnings),
        }

    def warn(self, topic: str, problem: str) -> None:
        """Note a problem under ``topic``; logged once until it is ``cleared``."""
        if self.warnings.get(topic) != problem:
            logger.warning("%s: %s", topic, problem)
        self.warnings[topic] = problem

    def clear(self, topic: str) -> None:
        """The problem under ``topic`` is over."""
        if self.warnings.pop(topic, None) is not None:
            logger.info("%s: working again", topic)

    async def keep(
        self, name: str, work: Callable[[], Awaitable[object]], *, may_finish: bool = False
    ) -> None:
        """Run ``work()`` until cancelled, restarting it whenever it fails.

        With ``may_finish``, returning is a normal end (the poller returns after its start
        check when polling is off); otherwise it counts as a failure too.
        """
        delay = FIRST_RESTART
        while True:
            started = time.monotonic()
            error: BaseException | None = None
            try:
                await work()
            except asyncio.CancelledError as err:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # shutdown: this task itself is being cancelled
                error = err  # a cancellation that escaped from something inside the task
            except Exception as err:  # noqa: BLE001 - the point of a supervisor
                error = err
            if error is None and may_finish:
                return
            why = f"{type(error).__name__}: {error}" if error else "ended unexpectedly"
            if time.monotonic() - started >= HEALTHY_RUN:
                delay = FIRST_RESTART
            logger.error(
                "task %s stopped (%s): restarting it in %g s",
                name,
                why,
                delay,
                exc_info=error if logger.isEnabledFor(logging.DEBUG) else None,
            )
            self.down[name] = why
            try:
                await self._sleep(delay)
            finally:
                del self.down[name]
            logger.info("task %s restarted", name)
            delay = min(delay * 2, MAX_RESTART)
