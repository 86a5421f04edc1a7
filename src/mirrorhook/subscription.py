"""A mirror's subscriptions: push with no inbound port (docs/design.md#subscriptions).

``subscribe = [...]`` names where a repository hears of publishes: the upstream's event
stream (``https://upstream/mirrorhook/v1/events?repo=ius``) or an MQTT broker's topic
(``mqtts://broker:8883/mirrorhook/upstream/ius``). A ``Follower`` keeps one subscription
open for ever: it connects through its transport (``subscribe_events.py``,
``subscribe_mqtt.py``), hands each announcement to the tree's intake, and reconnects with
backoff and jitter, capped at ``MAX_RECONNECT_WAIT``. What it has seen is kept in a
``Seen`` for ``status``, ``/v1/status`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mirrorhook.envelope import decode as decode_envelope
from mirrorhook.errors import PayloadError
from mirrorhook.intake import Announcement, Intake, Result
from mirrorhook.log import TreeLog
from mirrorhook.receiver_records import SubscriptionNote
from mirrorhook.retry import Backoff, Sleep, forever
from mirrorhook.state import iso_time
from mirrorhook.subscription_config import Subscription
from mirrorhook.throttle import WARNING_PERIOD, Throttle

logger = logging.getLogger(__name__)

FIRST_RECONNECT_WAIT = 1.0
MAX_RECONNECT_WAIT = 60.0
"""Between two connection attempts: about 1 s, 2 s, 4 s… capped at a minute."""
HEALTHY = 60.0
"""A connection that lasted this long resets the backoff: the next drop waits little."""
READ_DEADLINE = 45.0
"""Seconds without a byte (the publisher sends a heartbeat every 15 s) before a stream is
dropped and reconnected."""


class SubscriptionError(Exception):
    """A subscription's connection failed or ended; it is reconnected."""


@dataclass(slots=True)
class Seen:
    """What one subscription has seen, for ``status`` and the metrics."""

    url: str
    connected_since: float | None = None
    last_announcement: float | None = None
    last_id: str | None = None
    """The id of the last announcement (an SSE stream resumes after it: ``Last-Event-ID``)."""
    announcements: int = 0
    reconnects: int = 0
    last_error: str | None = None
    retry_hint: float | None = None
    """When the stream said to come back (its ``retry:`` field, in seconds), used once:
    a publisher that shuts down spreads its subscribers' return over time."""

    def note(self) -> SubscriptionNote:
        """What ``status`` shows of it, from the tree's state file."""
        return SubscriptionNote(
            url=self.url,
            connected_since=_iso(self.connected_since),
            last_announcement=_iso(self.last_announcement),
            announcements=self.announcements,
            reconnects=self.reconnects,
            last_error=self.last_error,
        )


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_time(moment)


Take = Callable[[bytes | str], Awaitable[None]]
"""Hands one announcement's envelope (its JSON) to the follower."""


class Transport(Protocol):
    """One way of subscribing: connect, call ``connected`` once it is up, then ``take``
    each announcement until the connection ends (by raising)."""

    async def __call__(
        self, subscription: Subscription, seen: Seen, connected: Callable[[], None], take: Take
    ) -> None: ...


class Follower:
    """Keeps one subscription of one tree open for ever."""

    def __init__(
        self,
        subscription: Subscription,
        intake: Intake,
        transport: Transport,
        *,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.subscription = subscription
        self.seen = Seen(subscription.shown)
        self._intake = intake
        self._transport = transport
        self._sleep = sleep
        self._backoff = backoff or Backoff(first=FIRST_RECONNECT_WAIT, cap=MAX_RECONNECT_WAIT)
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._log = TreeLog(logger, intake.config.name)
        self._unreadable = Throttle(WARNING_PERIOD)

    async def run(self) -> None:
        """Follow the subscription until cancelled."""
        async for attempt in forever(
            should_retry=lambda err: isinstance(err, Exception),
            wait=lambda _state: self._next_wait(),
            what=f"{self._log.prefix}subscription {self.seen.url}",
            sleep=self._sleep,
        ):
            with attempt:
                await self._follow_once()

    def _next_wait(self) -> float:
        """The backoff, or once the wait the stream asked for when it ended."""
        hint, self.seen.retry_hint = self.seen.retry_hint, None
        return hint if hint is not None else self._backoff.delay(max(1, self._failures))

    async def _follow_once(self) -> None:
        started: float | None = None

        def connected() -> None:
            nonlocal started
            started = self._clock()
            self.seen.connected_since = started
            self.seen.last_error = None
            self._log.info("subscribed to %s", self.seen.url)
            self._on_change()

        try:
            await self._transport(self.subscription, self.seen, connected, self._take)
        except Exception as err:
            self._dropped(err, started)
            raise
        ended = SubscriptionError("the connection ended")
        self._dropped(ended, started)
        raise ended

    def _dropped(self, err: Exception, started: float | None) -> None:
        healthy = started is not None and self._clock() - started >= HEALTHY
        self._failures = 1 if healthy else self._failures + 1
        self.seen.connected_since = None
        self.seen.reconnects += 1
        self.seen.last_error = str(err) or type(err).__name__
        self._on_change()

    async def _take(self, data: bytes | str) -> None:
        via, url = self.subscription.via, self.seen.url
        try:
            envelope = decode_envelope(data, self._intake.config.max_body)
        except PayloadError as err:
            if (held := self._unreadable.due()) is not None:
                more = f" ({held} more since the last such line)" if held else ""
                self._log.warning("announcement from %s ignored: %s%s", url, err, more)
            return
        outcome = await self._intake.take(Announcement(envelope.headers(), envelope.body, via, url))
        if outcome.result is not Result.BAD_SIGNATURE:
            self.seen.last_id = envelope.msg_id
        if not outcome.result.refused:
            self.seen.announcements += 1
            self.seen.last_announcement = self._clock()
            self._on_change()
