"""Keeping warnings about hostile traffic to a trickle: one line per period, with a count.

A flood of refused requests or shed connections must not flood the log (journald would
then drop the lines that matter); the metrics count every event anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

WARNING_PERIOD = 60.0
"""Seconds between two warnings of one kind."""
ACCEPT_FAILED = "socket.accept() out of system resource"
"""The message asyncio's selector loop reports when ``accept()`` fails with EMFILE, ENFILE,
ENOBUFS or ENOMEM. It reports it once per pending connection and retries every second, so
unthrottled it writes over a hundred tracebacks a second."""


class Throttle:
    """Lets one event through per ``period`` seconds and counts those held back."""

    __slots__ = ("_clock", "_held", "_next", "_period")

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def due(self) -> int | None:
        """Return how many were held back since the last one let through, or ``None`` when
        this one must be held back too."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._period
        return held

    def refused(self, what: str, peer: str, status: int | None, reason: str) -> None:
        """Log one refused request (``what``: "webhook", "report", "events") at most once
        per period, saying how many more were refused since the last such line; ``status``
        is the HTTP answer, when there is one."""
        if (held := self.due()) is not None:
            more = f" ({held} more refused so since the last such line)" if held else ""
            answer = "" if status is None else f" ({status})"
            logger.warning("%s from %s refused%s: %s%s", what, peer, answer, reason, more)


class AcceptErrorLog:
    """An event-loop exception handler that logs asyncio's ``accept()`` failures (see
    ``ACCEPT_FAILED``) at most once per ``period`` and passes anything else on."""

    def __init__(self, period: float = WARNING_PERIOD) -> None:
        self._period = period
        self._throttle = Throttle(period)
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become ``loop``'s exception handler, passing other reports to the one before."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if (held := self._throttle.due()) is not None:
            logger.warning(
                "cannot accept connections: %s; asyncio retries every second "
                "(%d more failures since the last warning, which comes at most every %g s)",
                context.get("exception"),
                held,
                self._period,
            )
