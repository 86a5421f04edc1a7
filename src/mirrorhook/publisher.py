"""The publisher: announces each new marker value to every mirror, at least once, newest wins.

One worker per mirror delivers the newest announcement, retrying with backoff and jitter
until the mirror accepts it or ``retry_for`` passes (docs/design.md#delivery-semantics); a
newer marker replaces an older one still being retried. A slow or dead mirror only ever
delays itself: the courier's concurrency bound covers starting requests, not waiting for
answers. What each mirror acknowledged is kept in ``state_dir/publisher.json``, so a restart
re-delivers what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState

from mirrorhook import marker
from mirrorhook.config import MirrorConfig, PublisherConfig
from mirrorhook.delivery import Courier, DeliveryError, Kind, Message, Receipt
from mirrorhook.errors import MirrorhookError
from mirrorhook.message import new_update
from mirrorhook.metrics import Metrics
from mirrorhook.record import DeliveryLog, Result, iso, state_path
from mirrorhook.retry import Backoff, Sleep, retrying
from mirrorhook.supervisor import Supervisor
from mirrorhook.table import format_table

logger = logging.getLogger(__name__)

DELIVERY_FIRST_WAIT = 5.0
DELIVERY_MAX_WAIT = 600.0
"""Between attempts to one mirror: about 5 s, 10 s, 20 s… capped at 10 minutes."""


def delivery_backoff() -> Backoff:
    """The backoff between attempts to one mirror."""
    return Backoff(first=DELIVERY_FIRST_WAIT, cap=DELIVERY_MAX_WAIT)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the delivery of one message to one mirror ended."""

    mirror: str
    result: Result
    status: int | None
    seconds: float
    attempts: int
    error: str | None = None


class SupersededError(Exception):
    """A newer marker was announced while an older one was being delivered."""


async def deliver(
    courier: Courier,
    mirror: MirrorConfig,
    message: Message,
    *,
    record: DeliveryLog,
    within: float,
    backoff: Backoff,
    attempts: int | None = None,
    sleep: Sleep = asyncio.sleep,
    is_current: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> Outcome:
    """Deliver ``message`` to ``mirror`` with retries; return how it ended (never raise).

    Retries stop after ``within`` seconds (or ``attempts``), on 410 Gone, or when
    ``is_current()`` turns false because a newer marker was announced.
    """
    value = message.update.current
    started = clock()
    tries = 0
    status: int | None = None
    metrics = metrics or Metrics()

    async def attempt_once() -> int:
        nonlocal tries, status
        if not is_current():
            raise SupersededError
        tries += 1
        attempt_started = clock()
        try:
            receipt = await _send(courier, mirror, message)
        except DeliveryError as err:
            metrics.delivery_seconds.observe(clock() - attempt_started)
            metrics.deliveries.labels(mirror=mirror.name, result=str(err.kind)).inc()
            status = err.status
            record.note(
                mirror.name,
                pending=value,
                result=str(Result.RETRYING),
                attempts=tries,
                last_attempt=iso(clock()),
                last_status=err.status,
                last_error=str(err),
            )
            if err.kind is Kind.MISCONFIGURED:
                logger.error("mirror %s refused the webhook: %s", mirror.name, err)
            raise
        metrics.delivery_seconds.observe(clock() - attempt_started)
        metrics.deliveries.labels(mirror=mirror.name, result="delivered").inc()
        status = receipt.status
        return receipt.status

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, DeliveryError):
            if error.retry_after is not None:
                # Never sooner than our own backoff: "Retry-After: 0" must not mean a
                # tight loop against a struggling mirror.
                return max(error.retry_after, backoff(state))
            if error.kind is Kind.MISCONFIGURED:
                return backoff.cap
        return backoff(state)

    try:
        async for attempt in retrying(
            should_retry=lambda err: isinstance(err, DeliveryError) and err.kind is not Kind.GONE,
            backoff=backoff,
            what=f"webhook to {mirror.name}",
            attempts=attempts,
            within=within,
            wait=wait,
            sleep=sleep,
        ):
            with attempt:
                await attempt_once()
    except SupersededError:
        return Outcome(mirror.name, Result.SUPERSEDED, status, clock() - started, tries)
    except DeliveryError as err:
        result = Result.GONE if err.kind is Kind.GONE else Result.FAILED
        if result is Result.GONE:
            record.note(mirror.name, pending=None, result=str(result), gone=value)
        else:
            record.note(mirror.name, pending=None, result=str(result))
        if result is Result.GONE:
            logger.warning(
                "mirror %s answered 410 Gone: not retrying marker %r", mirror.name, value
            )
        else:
            logger.error(
                "gave up delivering marker %r to %s after %d attempts: %s",
                value,
                mirror.name,
                tries,
                err,
            )
        return Outcome(mirror.name, result, err.status, clock() - started, tries, str(err))
    finished = clock()
    metrics.publish_lag.observe(max(0.0, finished - message.created))
    record.note(
        mirror.name,
        delivered=value,
        delivered_at=iso(finished),
        pending=None,
        result=str(Result.DELIVERED),
        attempts=tries,
        last_status=status,
        last_error=None,
    )
    logger.info(
        "delivered marker %r to %s (HTTP %s) in %.0f ms",
        value,
        mirror.name,
        status,
        1000 * (finished - started),
    )
    return Outcome(mirror.name, Result.DELIVERED, status, finished - started, tries)


async def _send(courier: Courier, mirror: MirrorConfig, message: Message) -> Receipt:
    """One attempt; any failure at all is a ``DeliveryError``.

    Whatever a mirror answers is at worst a failed delivery to that mirror: an error
    nobody foresaw must not end this worker, the others or the daemon.
    """
    try:
        return await courier.send(mirror, message)
    except DeliveryError:
        raise
    except Exception as err:
        logger.error(
            "unexpected error delivering to %s: %r",
            mirror.name,
            err,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        raise DeliveryError(Kind.TRANSIENT, f"unexpected error: {err!r}"[:300]) from None


class MirrorWorker:
    """Delivers the newest announced message to one mirror, one message at a time."""

    def __init__(self, mirror: MirrorConfig, deliver_one: Callable[..., Any]) -> None:
        self.mirror = mirror
        self.latest: Message | None = None
        self.delivered: str | None = None
        """The marker value the mirror last accepted."""
        self.gone: str | None = None
        """The marker value the mirror last refused with 410 Gone (not sent again)."""
        self._deliver = deliver_one
        self._wake = asyncio.Event()

    def settled(self, value: str) -> bool:
        """Whether the mirror needs nothing more for ``value``."""
        return value in (self.delivered, self.gone)

    def announce(self, message: Message) -> None:
        """Make ``message`` the one to deliver; an older one still retrying is dropped."""
        self.latest = message
        self._wake.set()

    async def sleep(self, seconds: float) -> None:
        """Wait between attempts, cut short when a newer message is announced."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Deliver announcements until cancelled; restartable (picks up the latest one)."""
        if self.latest is not None:
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            message = self.latest
            if message is None or self.settled(message.update.current):
                continue
            try:
                outcome: Outcome = await self._deliver(
                    self.mirror,
                    message,
                    sleep=self.sleep,
                    is_current=lambda message=message: self.latest is message,
                )
            except Exception as err:  # one mirror's trouble never ends its worker
                logger.error(
                    "delivery of marker %r to %s failed unexpectedly: %r",
                    message.update.current,
                    self.mirror.name,
                    err,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                continue
            if outcome.result is Result.DELIVERED:
                self.delivered = message.update.current
            elif outcome.result is Result.GONE:
                self.gone = message.update.current


NOTIFY_ATTEMPTS = 3
NOTIFY_WITHIN = 30.0
"""``mirrorhook notify`` is a push hook: a short retry budget, then it reports and exits."""


async def notify(
    config: PublisherConfig, *, clock: Callable[[], float] = time.time
) -> tuple[str, list[Outcome]]:
    """Deliver the current marker to every mirror once (with a short retry budget).

    A missing, empty or refused marker (see ``marker.load``) raises before anything is sent.
    """
    value = marker.read(config.root / config.marker)
    if not value:
        raise MirrorhookError(
            f"no marker to announce: {config.root / config.marker} is missing or empty"
        )
    message = Message.of(new_update(config.marker, value, config.name, clock()))
    record = DeliveryLog(state_path(config))
    async with Courier(timeout=config.timeout, concurrency=config.concurrency) as courier:
        results = await asyncio.gather(
            *(
                deliver(
                    courier,
                    mirror,
                    message,
                    record=record,
                    within=NOTIFY_WITHIN,
                    attempts=NOTIFY_ATTEMPTS,
                    backoff=Backoff(first=1.0, cap=5.0),
                    clock=clock,
                )
                for mirror in config.mirrors
            ),
            return_exceptions=True,
        )
    record.flush()
    # Every mirror gets its row, also one whose delivery failed in a way nobody foresaw.
    outcomes = [
        result
        if isinstance(result, Outcome)
        else Outcome(mirror.name, Result.FAILED, None, 0.0, 0, f"unexpected error: {result!r}")
        for mirror, result in zip(config.mirrors, results, strict=True)
    ]
    return value, outcomes


def format_outcomes(outcomes: list[Outcome]) -> str:
    """Return one aligned line per mirror: name, result, HTTP status, milliseconds, error."""
    rows = [("MIRROR", "RESULT", "HTTP", "MS", "ERROR")]
    rows += [
        (
            outcome.mirror,
            str(outcome.result),
            str(outcome.status or "-"),
            f"{outcome.seconds * 1000:.0f}",
            outcome.error or "",
        )
        for outcome in outcomes
    ]
    return format_table(rows, right=(2, 3))


class Publisher:
    """Fans marker values out to every mirror of ``config``."""

    def __init__(
        self,
        config: PublisherConfig,
        courier: Courier,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self._supervisor = supervisor or Supervisor()
        metrics = metrics or Metrics()
        self.record = DeliveryLog(state_path(config))
        self.current: str | None = None
        self._clock = clock
        backoff = backoff or delivery_backoff()

        async def deliver_one(mirror: MirrorConfig, message: Message, **options: Any) -> Outcome:
            return await deliver(
                courier,
                mirror,
                message,
                record=self.record,
                within=config.retry_for,
                backoff=backoff,
                clock=clock,
                metrics=metrics,
                **options,
            )

        self.workers = [MirrorWorker(mirror, deliver_one) for mirror in config.mirrors]
        recorded = self.record.mirrors()
        for worker in self.workers:
            entry = recorded.get(worker.mirror.name, {})
            worker.delivered = _text(entry.get("delivered"))
            worker.gone = _text(entry.get("gone"))
        metrics.pending.set_function(
            lambda: sum(not worker.settled(self.current or "") for worker in self.workers)
        )

    def publish(self, value: str) -> None:
        """Announce marker ``value``; mirrors that already have it send nothing.

        Every worker hears of it, also those whose mirror acknowledged ``value`` earlier:
        when the upstream goes back to an older marker, a retry of the newer one must stop.
        """
        if not value or value == self.current:
            return
        self.current = value
        message = Message.of(new_update(self.config.marker, value, self.config.name, self._clock()))
        behind = sum(not worker.settled(value) for worker in self.workers)
        logger.info("marker %r: announcing to %d of %d mirrors", value, behind, len(self.workers))
        for worker in self.workers:
            worker.announce(message)

    async def run(self) -> None:
        """Run the delivery workers and the record's writer until cancelled (each restarted
        by the supervisor should it ever stop)."""
        keep = self._supervisor.keep
        async with asyncio.TaskGroup() as group:
            group.create_task(keep("publisher record", self.record.run), name="publisher-record")
            for worker in self.workers:
                name = f"delivery to {worker.mirror.name}"
                group.create_task(keep(name, worker.run), name=name)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
