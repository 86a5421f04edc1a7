"""Subscribing to the upstream's event stream (``GET /v1/events``, server-sent events).

One ``aiohttp`` session per daemon; each stream resumes after the last announcement it
saw (``Last-Event-ID``). The stream is read in chunks into ``sse.EventReader``, which bounds
every line; a stream silent for ``READ_DEADLINE`` (the publisher's heartbeat comes every
15 s) is dropped, and the follower reconnects (docs/design.md#subscriptions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

import mirrorhook
from mirrorhook.sse import EventReader
from mirrorhook.subscription import (
    MAX_RECONNECT_WAIT,
    READ_DEADLINE,
    Seen,
    SubscriptionError,
    Take,
)
from mirrorhook.subscription_config import Subscription

CONNECT_TIMEOUT = 10.0
"""Seconds to connect and get the answer's headers."""


class EventsTransport:
    """Follows event streams over one shared HTTP session (``close`` it at the end)."""

    def __init__(self, read_deadline: float = READ_DEADLINE) -> None:
        self._read_deadline = read_deadline
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the loop, at the first subscription's start
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
                headers={"User-Agent": f"mirrorhook/{mirrorhook.__version__}"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(
        self, subscription: Subscription, seen: Seen, connected: Callable[[], None], take: Take
    ) -> None:
        session = self._opened()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if seen.last_id:
            headers["Last-Event-ID"] = seen.last_id
        async with asyncio.timeout(CONNECT_TIMEOUT):
            response = await session.get(subscription.url, headers=headers)
        async with response:
            if response.status != 200:
                raise SubscriptionError(f"answered {response.status} {response.reason}")
            if response.content_type != "text/event-stream":
                raise SubscriptionError(f"answered {response.content_type}, not an event stream")
            connected()
            reader = EventReader()
            while True:
                try:
                    async with asyncio.timeout(self._read_deadline):
                        chunk = await response.content.readany()
                except TimeoutError:
                    raise SubscriptionError(
                        f"nothing received for {self._read_deadline:g} s"
                    ) from None
                if not chunk:
                    if reader.retry is not None:  # the publisher said when to come back
                        seen.retry_hint = min(reader.retry / 1000, MAX_RECONNECT_WAIT)
                    raise SubscriptionError("the stream ended")
                for event in reader.feed(chunk):
                    if event.event == "announcement":
                        await take(event.data)
