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
import contextlib
import logging
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
DEFAULT_MAX_SUBSCRIBERS = 10_000
"""The default of ``[publisher] max_subscribers``."""


class Subscriber:
    """One open stream: the repositories it asked for and what waits to be sent to it."""

    __slots__ = ("queued", "repos", "wake")

    def __init__(self, repos: frozenset[str | None]) -> None:
        self.repos = repos
        self.queued: dict[str | None, Envelope] = {}
        """The newest unsent announcement per repository (an older one is replaced)."""
        self.wake = asyncio.Event()

    def offer(self, repo: str | None, envelope: Envelope) -> None:
        self.queued[repo] = envelope
        self.wake.set()

    def take(self) -> list[Envelope]:
        """Everything queued, oldest announcement first; the queue is left empty."""
        taken = sorted(self.queued.values(), key=lambda envelope: envelope.timestamp)
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
    ) -> None:
        self.max_subscribers = max_subscribers
        self.heartbeat = heartbeat
        self.write_deadline = write_deadline
        self.latest: dict[str | None, Envelope] = {}
        self._subscribers: set[Subscriber] = set()
        self.closed = asyncio.Event()
        """Set at shutdown: every stream ends."""

    def announce(self, repo: str | None, envelope: Envelope) -> None:
        """Make ``envelope`` the current announcement of ``repo`` and queue it for each of
        its subscribers. Never waits."""
        self.latest[repo] = envelope
        for subscriber in self._subscribers:
            if repo in subscriber.repos:
                subscriber.offer(repo, envelope)

    def forget(self, repo: str | None) -> None:
        """A repository is no longer published: no last value for it any more."""
        self.latest.pop(repo, None)

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
                subscriber.offer(repo, latest)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def count(self, repo: str | None) -> int:
        """How many streams follow ``repo``."""
        return sum(repo in subscriber.repos for subscriber in self._subscribers)

    def __len__(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        self.closed.set()
        for subscriber in self._subscribers:
            subscriber.wake.set()


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
        while not streams.closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(streams.heartbeat):
                    await subscriber.wake.wait()
            if streams.closed.is_set():
                break
            chunk = b"".join(frame(envelope) for envelope in subscriber.take()) or HEARTBEAT_LINE
            async with asyncio.timeout(streams.write_deadline):
                await response.write(chunk)
    except TimeoutError:
        logger.info(
            "event stream to %s dropped: it took no event for %g s", peer, streams.write_deadline
        )
    except (ConnectionResetError, ConnectionError):
        logger.debug("event stream to %s: the subscriber left", peer)
    finally:
        streams.unsubscribe(subscriber)
    return response


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
    trees = publishers.repos
    if publishers.single:
        known = {trees[0].name, trees[0].label}
        if all(name in known for name in names):
            return [None]
        listed = sorted(known)
    else:
        if not names:
            return [tree.repo for tree in trees]
        found = [publishers.named(name) for name in names]
        if all(tree is not None for tree in found):
            return [tree.repo for tree in found if tree is not None]
        listed = [str(tree.repo) for tree in trees]
    unknown = next(name for name in names if publishers.single or publishers.named(name) is None)
    raise web.HTTPNotFound(text=f"no repository {unknown!r} here; there are {', '.join(listed)}\n")
