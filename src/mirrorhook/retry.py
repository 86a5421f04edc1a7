"""The retry policy: exponential backoff with jitter, on named exceptions only.

Every retry loop of mirrorhook is built here, on tenacity's ``AsyncRetrying``, with an
injectable sleep and random source so that tests run without waiting and deterministically.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: retry n waits U(c/2, c), c = min(cap, first * 2**(n-1))."""

    first: float = 10.0
    cap: float = 600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Return the wait before retry number ``attempt`` (1 for the first retry)."""
        ceiling = min(self.cap, self.first * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 2, ceiling)

    def __call__(self, state: RetryCallState) -> float:
        return self.delay(state.attempt_number)


def retrying(
    *,
    attempts: int,
    should_retry: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """Return a tenacity loop that retries ``what`` while ``should_retry(error)`` holds.

    The last error is re-raised unchanged when the attempts run out or the error is not
    retryable; every scheduled retry is logged with its reason and delay.
    """

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed (attempt %d of %d): %s; retrying in %.1f s",
            what,
            state.attempt_number,
            attempts,
            error,
            delay,
        )

    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=backoff,
        retry=retry_if_exception(should_retry),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
