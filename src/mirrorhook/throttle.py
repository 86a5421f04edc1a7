"""Keeping warnings about hostile traffic to a trickle: one line per period, with a count.

A flood of refused requests or shed connections must not flood the log (journald would
then drop the lines that matter); the metrics count every event anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

WARNING_PERIOD = 60.0
"""Seconds between two warnings of one kind."""


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
