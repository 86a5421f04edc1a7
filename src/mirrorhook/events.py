"""``GET /v1/events``: the publisher's announcements as server-sent events, for mirrors with
no inbound port (docs/design.md#subscriptions).

On connect a subscriber gets the current announcement of each repository it asks for (the
last value), then each new one as it is announced: ``event: announcement``, ``id:`` the
webhook id, ``data:`` the envelope (``envelope.py``). A comment line goes out after
``HEARTBEAT`` seconds without output, so that proxies and the mirror's read deadline see a
live stream.

Bounded: at most ``max_subscribers`` streams; each keeps only the newest announcement per
repository queued, so a slow reader costs one envelope per repository, however many
publishes it misses; one that does not take an event within ``WRITE_DEADLINE`` is dropped.
Announcing never waits on a subscriber: it only replaces a queued envelope and sets an
event. The framing is written here rather than with ``aiohttp-sse``: it is four lines of
the W3C format, and that package's ping task writes on a timer of its own, where we need a
heartbeat only after silence, a write deadline per event and newest-wins queues.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection, Mapping
from typing import Protocol

from aiohttp import web

from mirrorhook.envelope import Envelope
from mirrorhook.publisher_config import PublisherHost

logger = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"
HEARTBEAT = 15.0
"""Seconds of silence after which a comment line is sent."""
WRITE_DEADLINE = 30.0
"""Seconds a subscriber has to take one event (or heartbeat) before it is dropped."""
WAKE_BATCH = 256
"""Subscribers handed a new announcement per loop pass."""
FREE_BUFFER = 16384
"""Bytes a stream's connection may hold unsent before a write is given a deadline."""
RECONNECTS_PER_SECOND = 1000
"""Subscribers told to come back per second after a shutdown (a 2-core publisher accepts
some 3,000 streams a second: BENCHMARKS.md §9)."""
MIN_RECONNECT_SPREAD = 1.0
MAX_RECONNECT_SPREAD = 60.0
DEFAULT_MAX_SUBSCRIBERS = 10_000
"""The default of ``[publisher] max_subscribers``."""


class Subscriber:
    """One open stream: the repositories it asked for and what waits to be sent to it."""

    __slots__ = ("last_sent", "queued", "repos", "wake")

    def __init__(self, repos: frozenset[str | None]) -> None:
        self.repos = repos
        self.queued: dict[str | None, tuple[int, bytes]] = {}
        """The newest unsent announcement per repository, framed (an older one is replaced)."""
        self.wake = asyncio.Event()
        self.last_sent = time.monotonic()

    def offer(self, repo: str | None, timestamp: int, framed: bytes) -> None:
        self.queued[repo] = (timestamp, framed)
        self.wake.set()

    def take(self) -> bytes:
        """Everything queued, oldest announcement first, as one chunk; the queue is left
        empty."""
        taken = b"".join(framed for _stamp, framed in sorted(self.queued.values()))
        self.queued.clear()
        self.wake.clear()
        return taken


class EventStreams:
    """The publisher's subscribers and the last announcement of each repository."""

    def __init__(
        self,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        *,
        heartbeat: float = HEARTBEAT,
        write_deadline: float = WRITE_DEADLINE,
        rng: random.Random | None = None,
    ) -> None:
        self.max_subscribers = max_subscribers
        self.heartbeat = heartbeat
        self.write_deadline = write_deadline
        self.latest: dict[str | None, Envelope] = {}
        self._framed: dict[str | None, tuple[int, bytes]] = {}
        """Each repository's current announcement, framed once for all its subscribers."""
        self._subscribers: set[Subscriber] = set()
        self._rng = rng or random.Random()
        self._ticker: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()
        """Set at shutdown: every stream ends."""
        self.reconnect_spread = MIN_RECONNECT_SPREAD
        """Seconds over which the subscribers are told to come back after a shutdown."""

    def announce(self, repo: str | None, envelope: Envelope) -> None:
        """Make ``envelope`` the current announcement of ``repo`` and queue it for each of
        its subscribers, ``WAKE_BATCH`` at a time (one loop pass each: a ``/healthz`` need not
        wait for ten thousand streams). Never waits."""
        self.latest[repo] = envelope
        self._framed[repo] = (envelope.timestamp, frame(envelope))
        self._offer([s for s in self._subscribers if repo in s.repos], repo)

    def _offer(self, subscribers: list[Subscriber], repo: str | None) -> None:
        current = self._framed.get(repo)
        if current is None:
            return
        for subscriber in subscribers[:WAKE_BATCH]:
            subscriber.offer(repo, *current)  # the newest now, even if this batch is late
        if len(subscribers) > WAKE_BATCH:
            loop = asyncio.get_running_loop()
            loop.call_soon(self._offer, subscribers[WAKE_BATCH:], repo)

    def forget(self, repo: str | None) -> None:
        """A repository is no longer published: no last value for it any more."""
        self.latest.pop(repo, None)
        self._framed.pop(repo, None)

    def subscribe(
        self, repos: Collection[str | None], last_event_id: str | None = None
    ) -> Subscriber | None:
        """A new subscriber with the last value of each of ``repos`` queued (but the one it
        says it has, by ``Last-Event-ID``); ``None`` when the streams are at their bound."""
        if len(self._subscribers) >= self.max_subscribers:
            return None
        subscriber = Subscriber(frozenset(repos))
        for repo in subscriber.repos:
            latest = self.latest.get(repo)
            if latest is not None and latest.msg_id != last_event_id:
                subscriber.offer(repo, *self._framed[repo])
        self._subscribers.add(subscriber)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(self.heartbeat, self._tick)
        return subscriber

    def _tick(self) -> None:
        """Wake each stream that has sent nothing for a heartbeat: it sends a comment line.
        One timer for all streams, rather than a timeout each."""
        self._ticker = None
        due = time.monotonic() - self.heartbeat
        for subscriber in self._subscribers:
            if subscriber.last_sent <= due:
                subscriber.wake.set()
        if self._subscribers and not self.closed.is_set():
            loop = asyncio.get_running_loop()
            self._ticker = loop.call_later(self.heartbeat / 2, self._tick)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def count(self, repo: str | None) -> int:
        """How many streams follow ``repo``."""
        return sum(repo in subscriber.repos for subscriber in self._subscribers)

    def __len__(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every stream (at shutdown), each telling its subscriber when to come back:
        a random moment within a spread that grows with their number, so that they do not
        all reconnect to the restarted publisher at once (its accept queue would overflow)."""
        self.reconnect_spread = min(
            MAX_RECONNECT_SPREAD,
            max(MIN_RECONNECT_SPREAD, len(self._subscribers) / RECONNECTS_PER_SECOND),
        )
        self.closed.set()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for subscriber in self._subscribers:
            subscriber.wake.set()

    def retry_line(self) -> bytes:
        """The ``retry:`` field a stream ends with at shutdown (milliseconds)."""
        delay = self._rng.uniform(0, self.reconnect_spread)
        return f"retry: {round(delay * 1000)}\n\n".encode("ascii")


def frame(envelope: Envelope) -> bytes:
    """One ``announcement`` event (the envelope is one line of ASCII JSON)."""
    return (
        b"event: announcement\nid: "
        + envelope.msg_id.encode("ascii")
        + b"\ndata: "
        + envelope.encode()
        + b"\n\n"
    )


HEARTBEAT_LINE = b": keep-alive\n\n"


async def stream(
    request: web.Request, streams: EventStreams, repos: Collection[str | None]
) -> web.StreamResponse:
    """Answer one subscriber until it leaves, falls behind, or the publisher stops."""
    peer = request.remote or "unix socket"
    subscriber = streams.subscribe(repos, request.headers.get("Last-Event-ID"))
    if subscriber is None:
        logger.warning(
            "event stream from %s refused: %d subscribers already", peer, streams.max_subscribers
        )
        raise web.HTTPServiceUnavailable(
            text=f"at most {streams.max_subscribers} subscribers\n", headers={"Retry-After": "60"}
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    try:
        async with asyncio.timeout(streams.write_deadline):
            await response.prepare(request)
        while True:
            await subscriber.wake.wait()
            if streams.closed.is_set():
                await _write(request, response, streams.retry_line(), 1.0)
                break
            chunk = subscriber.take() or HEARTBEAT_LINE
            await _write(request, response, chunk, streams.write_deadline)
            subscriber.last_sent = time.monotonic()
    except TimeoutError:
        logger.info(
            "event stream to %s dropped: it took no event for %g s", peer, streams.write_deadline
        )
    except (ConnectionResetError, ConnectionError):
        logger.debug("event stream to %s: the subscriber left", peer)
    finally:
        streams.unsubscribe(subscriber)
    return response


async def _write(
    request: web.Request, response: web.StreamResponse, chunk: bytes, deadline: float
) -> None:
    """Write ``chunk``; only when the connection's buffer is already full can that wait, and
    then for ``deadline`` seconds at most (a subscriber that does not read is dropped)."""
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size() < FREE_BUFFER:
        await response.write(chunk)  # aiohttp waits only for a transport that paused writing
        return
    async with asyncio.timeout(deadline):
        await response.write(chunk)


class Running(Protocol):
    """The running ``[publisher]`` section (a reload changes it)."""

    def running(self) -> PublisherHost: ...


STREAMS = web.AppKey("event_streams", EventStreams)
HOST: web.AppKey[Running] = web.AppKey("event_host")


def add_routes(app: web.Application, streams: EventStreams, upstream: Running) -> None:
    """Serve ``GET /v1/events`` on ``app``; the streams end when the app shuts down."""
    app[STREAMS] = streams
    app[HOST] = upstream

    async def close(_app: web.Application) -> None:
        streams.close()

    app.on_shutdown.append(close)
    app.router.add_get(EVENTS_PATH, handle_events)


async def handle_events(request: web.Request) -> web.StreamResponse:
    """Stream the announcements of the repositories ``?repo=`` names (all without it)."""
    publishers = request.app[HOST].running()
    if publishers.signing_key is None:
        raise web.HTTPNotFound(
            text="this upstream signs with shared secrets only; subscriptions need its "
            "signing_key_file (v1a)\n"
        )
    return await stream(request, request.app[STREAMS], asked(publishers, request.query))


def asked(publishers: PublisherHost, query: Mapping[str, str]) -> list[str | None]:
    """The repositories a subscriber asks for by ``repo=`` (repeatable). The single form's one
    tree answers to the publisher's ``name`` and its root folder's name, as in the mirror
    list; a name not published here is a 404 that lists the names."""
    if hasattr(query, "getall"):
        names = list(query.getall("repo", []))
    else:
        names = [query["repo"]] if "repo" in query else []
    if not names:
        return [tree.repo for tree in publishers.repos]
    found = []
    for name in names:
        if (tree := publishers.called(name)) is None:
            listed = ", ".join(publishers.names())
            raise web.HTTPNotFound(text=f"no repository {name!r} here; there are {listed}\n")
        found.append(tree.repo)
    return found
