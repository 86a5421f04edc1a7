"""Test mirrors: real aiohttp servers on loopback that record webhooks and answer as told."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from mirrorhook import message, signing
from mirrorhook.errors import MirrorhookError

Answer = Callable[[int], web.Response | None]
"""Given the 1-based number of the request, return a response, or None to hang."""


def always(status: int, **headers: str) -> Answer:
    return lambda _n: web.json_response({"status": "x"}, status=status, headers=headers)


def hang() -> Answer:
    return lambda _n: None


@dataclass
class Received:
    """One webhook as the mirror saw it."""

    msg_id: str
    timestamp: int
    current: str
    verified: bool
    at: float


@dataclass
class HookMirror:
    """A recording webhook endpoint; ``answer`` decides each response."""

    secret: signing.Secret
    answer: Answer = field(default_factory=lambda: always(202))
    received: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            verified = signing.verify(self.secret, request.headers, body, now=time.time())
            ok = True
            msg_id, stamp = verified.msg_id, verified.timestamp
        except MirrorhookError:
            ok = False
            msg_id = request.headers.get("webhook-id", "")
            stamp = int(request.headers.get("webhook-timestamp", "0") or 0)
        try:
            current = message.decode(body).current
        except MirrorhookError:
            current = ""
        self.received.append(Received(msg_id, stamp, current, ok, time.monotonic()))
        response = self.answer(len(self.received))
        if response is None:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")
        return response

    def values(self) -> list[str]:
        return [hook.current for hook in self.received if hook.verified]


@contextmanager
def mirror_in_thread(mirror: HookMirror, port: int) -> Iterator[HookMirror]:
    """Serve ``mirror`` on 127.0.0.1:port from a thread (for tests driving subprocesses)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(mirror.app(), access_log=None, shutdown_timeout=0.1)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield mirror
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
