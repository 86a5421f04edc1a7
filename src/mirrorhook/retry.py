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
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    stop_never,
)

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
    should_retry: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str,
    attempts: int | None = None,
    within: float | None = None,
    wait: Callable[[RetryCallState], float] | None = None,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """Return a tenacity loop that retries ``what`` while ``should_retry(error)`` holds.

    It stops after ``attempts`` tries, or when the next try would start more than
    ``within`` seconds after the first, whichever comes first. Waits follow ``backoff``
    unless ``wait`` decides (it may honour a server's Retry-After, say). The last error is
    re-raised unchanged when the loop stops or the error is not retryable; every scheduled
    retry is logged with its reason and delay.
    """
    stops: list[Any] = []
    if attempts is not None:
        stops.append(stop_after_attempt(attempts))
    if within is not None:
        stops.append(stop_before_delay(within))
    if not stops:
        raise ValueError("a retry loop needs attempts or within")
    of_attempts = f" of {attempts}" if attempts is not None else ""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed (attempt %d%s): %s; retrying in %.1f s",
            what,
            state.attempt_number,
            of_attempts,
            error,
            delay,
        )

    return AsyncRetrying(
        stop=stop_any(*stops),
        wait=wait or backoff,
        retry=retry_if_exception(should_retry),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )


def forever(
    *,
    should_retry: Callable[[BaseException], bool],
    wait: Callable[[RetryCallState], float],
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """Return a tenacity loop that never stops retrying ``what`` while ``should_retry``
    holds (a subscription: its connection ends only to be made again). ``wait`` decides
    each delay (it may reset after a long healthy connection); each retry is logged."""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning("%s: %s; reconnecting in %.1f s", what, error, delay)

    return AsyncRetrying(
        stop=stop_never,
        wait=wait,
        retry=retry_if_exception(should_retry),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
