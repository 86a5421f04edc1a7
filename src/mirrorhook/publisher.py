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
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenacity import RetryCallState

from mirrorhook.changes import Change
from mirrorhook.delivery import Courier, Message, Receipt
from mirrorhook.errors import DeliveryError, DeliveryKind
from mirrorhook.log import TreeLog, counted
from mirrorhook.metrics import DeliveryMetrics, NoMetrics
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig
from mirrorhook.record import DeliveryLog, DeliveryResult, publisher_state_path
from mirrorhook.retry import Backoff, Sleep, retrying
from mirrorhook.state import iso_time, text_or_none
from mirrorhook.supervisor import Supervisor

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
    result: DeliveryResult
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
    metrics: DeliveryMetrics | None = None,
) -> Outcome:
    """Deliver ``message`` to ``mirror`` with retries; return how it ended (never raise).

    Retries stop after ``within`` seconds (or ``attempts``), on 410 Gone, or when
    ``is_current()`` turns false because a newer marker was announced.
    """
    value = message.update.current
    log = TreeLog(logger, message.update.repo)  # a host's log names each line's repository
    started = clock()
    tries = 0
    status: int | None = None
    metrics = metrics or NoMetrics()

    async def attempt_once() -> int:
        nonlocal tries, status
        if not is_current():
            raise SupersededError
        tries += 1
        attempt_started = clock()
        try:
            receipt = await _send(courier, mirror, message, log)
        except DeliveryError as err:
            metrics.delivery_attempted(mirror.name, str(err.kind), clock() - attempt_started)
            status = err.status
            record.note(
                mirror.name,
                pending=value,
                result=str(DeliveryResult.RETRYING),
                attempts=tries,
                last_attempt=iso_time(clock()),
                last_status=err.status,
                last_error=str(err),
            )
            if err.kind is DeliveryKind.MISCONFIGURED:
                log.error("mirror %s refused the webhook: %s", mirror.name, err)
            raise
        metrics.delivery_attempted(mirror.name, "delivered", clock() - attempt_started)
        status = receipt.status
        return receipt.status

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, DeliveryError):
            return backoff(state)
        # A misconfigured mirror waits the longest interval; otherwise our backoff. A
        # Retry-After may lengthen either, never shorten it: "Retry-After: 0" must not mean
        # a tight loop against a struggling mirror.
        ours = backoff.cap if error.kind is DeliveryKind.MISCONFIGURED else backoff(state)
        return max(error.retry_after or 0.0, ours)

    try:
        async for attempt in retrying(
            should_retry=lambda err: (
                isinstance(err, DeliveryError) and err.kind is not DeliveryKind.GONE
            ),
            backoff=backoff,
            what=f"{log.prefix}webhook to {mirror.name}",
            attempts=attempts,
            within=within,
            wait=wait,
            sleep=sleep,
        ):
            with attempt:
                await attempt_once()
    except SupersededError:
        return Outcome(mirror.name, DeliveryResult.SUPERSEDED, status, clock() - started, tries)
    except DeliveryError as err:
        result = DeliveryResult.GONE if err.kind is DeliveryKind.GONE else DeliveryResult.FAILED
        if result is DeliveryResult.GONE:
            record.note(mirror.name, pending=None, result=str(result), gone=value)
        else:
            record.note(mirror.name, pending=None, result=str(result))
        if result is DeliveryResult.GONE:
            log.warning("mirror %s answered 410 Gone: not retrying marker %r", mirror.name, value)
        else:
            log.error(
                "gave up delivering marker %r to %s after %d attempts: %s",
                value,
                mirror.name,
                tries,
                err,
            )
        return Outcome(mirror.name, result, err.status, clock() - started, tries, str(err))
    finished = clock()
    metrics.delivered(max(0.0, finished - message.created))
    record.delivered(
        mirror.name,
        value,
        iso_time(finished),
        pending=None,
        result=str(DeliveryResult.DELIVERED),
        attempts=tries,
        last_status=status,
        last_error=None,
    )
    log.info(
        "delivered marker %r to %s (HTTP %s) in %.0f ms",
        value,
        mirror.name,
        status,
        1000 * (finished - started),
    )
    return Outcome(mirror.name, DeliveryResult.DELIVERED, status, finished - started, tries)


async def _send(courier: Courier, mirror: MirrorConfig, message: Message, log: TreeLog) -> Receipt:
    """One attempt; any failure at all is a ``DeliveryError``.

    Whatever a mirror answers is at worst a failed delivery to that mirror: an error
    nobody foresaw must not end this worker, the others or the daemon.
    """
    try:
        return await courier.send(mirror, message)
    except DeliveryError:
        raise
    except Exception as err:
        log.error(
            "unexpected error delivering to %s: %r",
            mirror.name,
            err,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        raise DeliveryError(DeliveryKind.TRANSIENT, f"unexpected error: {err!r}"[:300]) from None


class DeliverOne(Protocol):
    """Delivers one message to one mirror with retries (``deliver`` with the publisher's
    settings), waiting with ``sleep`` and giving up once ``is_current()`` turns false."""

    async def __call__(
        self,
        mirror: MirrorConfig,
        message: Message,
        *,
        sleep: Sleep,
        is_current: Callable[[], bool],
    ) -> Outcome: ...


class MirrorWorker:
    """Delivers the newest announced message to one mirror, one message at a time."""

    def __init__(self, mirror: MirrorConfig, deliver_one: DeliverOne) -> None:
        self.mirror = mirror
        self.latest: Message | None = None
        self.delivered: str | None = None
        """The marker value the mirror last accepted."""
        self.gone: str | None = None
        """The marker value the mirror last refused with 410 Gone (not sent again)."""
        self._deliver = deliver_one
        self._wake = asyncio.Event()

    def _is_latest(self, message: Message) -> bool:
        return self.latest is message

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
                    is_current=functools.partial(self._is_latest, message),
                )
            except Exception as err:  # one mirror's trouble never ends its worker
                log = TreeLog(logger, message.update.repo)
                log.error(
                    "delivery of marker %r to %s failed unexpectedly: %r",
                    message.update.current,
                    self.mirror.name,
                    err,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                continue
            if outcome.result is DeliveryResult.DELIVERED:
                self.delivered = message.update.current
            elif outcome.result is DeliveryResult.GONE:
                self.gone = message.update.current


class Publisher:
    """Fans marker values out to every mirror of ``config``."""

    def __init__(
        self,
        config: PublisherConfig,
        courier: Courier,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        metrics: DeliveryMetrics | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self._log = TreeLog(logger, config.repo)
        self._supervisor = supervisor or Supervisor()
        metrics = metrics or NoMetrics()
        self.record = DeliveryLog(publisher_state_path(config))
        self.current: str | None = None
        self._clock = clock
        backoff = backoff or delivery_backoff()

        async def deliver_one(
            mirror: MirrorConfig, message: Message, *, sleep: Sleep, is_current: Callable[[], bool]
        ) -> Outcome:
            return await deliver(
                courier,
                mirror,
                message,
                record=self.record,
                within=config.retry_for,
                backoff=backoff,
                clock=clock,
                metrics=metrics,
                sleep=sleep,
                is_current=is_current,
            )

        self.workers = [
            MirrorWorker(mirror, deliver_one) for mirror in config.mirrors if mirror.url
        ]
        recorded = self.record.load()
        for worker in self.workers:
            entry = recorded.get(worker.mirror.name, {})
            worker.delivered = text_or_none(entry.get("delivered"))
            worker.gone = text_or_none(entry.get("gone"))
        metrics.watch_pending(
            lambda: sum(not worker.settled(self.current or "") for worker in self.workers)
        )

    def publish(self, value: str, changes: Change | None = None) -> Message | None:
        """Announce marker ``value`` (with the change from the previous publish, when the
        tree's manifests give one); mirrors that already have it send nothing. Return the
        announcement (``None`` when ``value`` is already the current one), for the
        broadcast to subscribers.

        Every worker hears of it, also those whose mirror acknowledged ``value`` earlier:
        when the upstream goes back to an older marker, a retry of the newer one must stop.
        """
        if not value or value == self.current:
            return None
        self.current = value
        message = Message.announcing(self.config, value, self._clock(), changes)
        behind = sum(not worker.settled(value) for worker in self.workers)
        self._log.info(
            "marker %r: announcing to %d of %s", value, behind, counted(len(self.workers), "mirror")
        )
        for worker in self.workers:
            worker.announce(message)
        return message

    async def run(self) -> None:
        """Run the delivery workers and the record's writer until cancelled (each restarted
        by the supervisor should it ever stop)."""
        keep = self._supervisor.keep
        async with asyncio.TaskGroup() as group:
            tree = "" if self.config.repo is None else f" of {self.config.repo}"
            group.create_task(keep(f"publisher record{tree}", self.record.run))
            for worker in self.workers:
                name = f"delivery{tree} to {worker.mirror.name}"
                group.create_task(keep(name, worker.run), name=name)
