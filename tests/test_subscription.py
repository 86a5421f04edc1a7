"""A subscription against hostile or broken upstreams: a real aiohttp server on loopback
that misbehaves on demand (a 1 MiB line, silence, garbage, bodies over max_body, wrong
answers). The follower drops the stream, records why, reconnects with backoff, and never
schedules a sync for any of it (docs/design.md#subscriptions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mirrorhook.fleet import build_receiver
from mirrorhook.subscribe_events import EventsTransport
from mirrorhook.subscription import Follower
from tests.helpers import key_pair, publish, receiver_config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def stream_of(request: web.Request, *chunks: bytes, hold: float = 30) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    await asyncio.sleep(hold)
    return response


async def long_line(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, b"data: " + b"x" * (1 << 20))


async def silent(request: web.Request) -> web.StreamResponse:
    return await stream_of(request)


async def garbage(request: web.Request) -> web.StreamResponse:
    events = b"event: announcement\ndata: {not json\n\n" * 50
    envelope = b'{"id":"a","timestamp":1,"signature":"v1a,x","body":"' + b"y" * 60_000 + b'"}'
    big = b"event: announcement\ndata: " + envelope + b"\n\n"
    return await stream_of(request, events, big, big, hold=0.2)


async def restarting(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, b"retry: 7250\n\n", hold=0)


async def not_a_stream(_request: web.Request) -> web.Response:
    return web.Response(text="<html>a login page</html>", content_type="text/html")


async def gone(_request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such stream")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    for path, handler in {
        "/long": long_line,
        "/silent": silent,
        "/garbage": garbage,
        "/html": not_a_stream,
        "/gone": gone,
        "/restarting": restarting,
    }.items():
        app.router.add_get(path, handler)
    running = TestServer(app, host="127.0.0.1")
    await running.start_server()
    try:
        yield running
    finally:
        await running.close()


class Waits:
    """Records the follower's waits between connections (without waiting long)."""

    def __init__(self, stop_after: int) -> None:
        self.delays: list[float] = []
        self._stop_after = stop_after

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self._stop_after:
            raise asyncio.CancelledError
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/long", "a line longer than 65536 bytes"),
        ("/silent", "nothing received for 0.3 s"),
        ("/garbage", "the stream ended"),
        ("/html", "answered text/html, not an event stream"),
        ("/gone", "answered 404 Not Found"),
    ],
)
async def test_a_broken_stream_is_dropped_and_reconnected_with_backoff_and_no_sync(
    tmp_path: Path, server: TestServer, path: str, error: str
) -> None:
    _private, public = key_pair(tmp_path / "keys", "upstream")
    url = f"http://127.0.0.1:{server.port}{path}"
    config = receiver_config(
        tmp_path,
        upstream="rsync://127.0.0.1:9/up/",
        public_key_file=str(public),
        subscribe=[url],
        poll_interval=0,
    ).receiver
    assert config is not None
    config.target.mkdir(parents=True)
    publish(config.target, "1")
    receiver = build_receiver(config)
    waits = Waits(stop_after=3)
    transport = EventsTransport(read_deadline=0.3)
    follower = Follower(config.subscribe[0], receiver.intake, transport, sleep=waits)
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(follower.run(), 30)
    finally:
        await transport.close()
    assert follower.seen.reconnects == 3
    assert follower.seen.last_error == error
    assert follower.seen.connected_since is None
    assert not receiver.scheduler.pending  # nothing that came in scheduled a sync
    # Backoff with jitter, growing while the connections fail: U(c/2, c), c = 1, 2, 4 s.
    ceilings = [1.0, 2.0, 4.0]
    assert all(c / 2 <= delay <= c for c, delay in zip(ceilings, waits.delays, strict=True))


async def test_a_stream_that_says_when_to_come_back_is_followed_then(
    tmp_path: Path, server: TestServer
) -> None:
    """A publisher shutting down ends each stream with a retry: (spreading its subscribers'
    return); the follower waits that long once, then backs off as usual."""
    _private, public = key_pair(tmp_path / "keys", "upstream")
    config = receiver_config(
        tmp_path,
        upstream="rsync://127.0.0.1:9/up/",
        public_key_file=str(public),
        subscribe=[f"http://127.0.0.1:{server.port}/restarting"],
        poll_interval=0,
    ).receiver
    assert config is not None
    receiver = build_receiver(config)
    waits = Waits(stop_after=2)
    transport = EventsTransport()
    follower = Follower(config.subscribe[0], receiver.intake, transport, sleep=waits)
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(follower.run(), 30)
    finally:
        await transport.close()
    assert waits.delays == [7.25, 7.25]  # each end said so again
