"""Test mirrors: real aiohttp servers on loopback that record webhooks and answer as told."""

from __future__ import annotations

import asyncio
import socketserver
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
    repo: str | None = None


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
            update = message.decode(body)
            current, repo = update.current, update.repo
        except MirrorhookError:
            current, repo = "", None
        self.received.append(Received(msg_id, stamp, current, ok, time.monotonic(), repo))
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


class RawMirror:
    """A mirror that answers each request with raw bytes of our choosing, from a thread.

    aiohttp's server will not send what a hostile mirror can (non-ASCII header bytes, a
    status line that is no HTTP, a body that is not what its encoding says), so this one
    writes the answer itself: request number n gets ``answers[(n - 1) % len(answers)]``.
    """

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests = 0
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RawMirror:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/hook"

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        mirror = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                self.rfile.read(length)
                mirror.requests += 1
                self.wfile.write(mirror.answers[(mirror.requests - 1) % len(mirror.answers)])

        return Handler
