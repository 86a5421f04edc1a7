"""Guarding the web server's connections: deadlines, a header byte budget and a bound.

aiohttp's server waits for a request's headers as long as its keep-alive timer allows (an
hour by default, and armed at a connection's start only since aiohttp 3.14), buffers up to
about 1 MB of unfinished headers per connection, and accepts connections until the process
runs out of file descriptors. Every listener of ``mirrorhook serve`` therefore hands its
connections to a ``ConnectionGuard``:

- a connection without a request in progress that has sent nothing — since it opened, or
  since its last response — is closed after ``idle_timeout`` seconds; once it has sent
  something, it has ``header_deadline`` seconds in all to complete the request's headers,
  however steadily the bytes trickle;
- at most ``max_header_bytes`` may arrive before the headers are complete;
- at most ``max_connections`` are open: a new one beyond the bound closes the connection
  that has waited longest for a request. Connections whose request headers are in are
  spared (when no other is left, the newcomer itself is closed). An attacker holding the
  bound thus sheds its own connections, and a valid webhook, whose headers arrive at once,
  is answered;
- the warning about shed connections, and asyncio's about ``accept()`` failing for lack of
  file descriptors, are logged at most once per ``warning_period``.

A request in progress (headers complete, handler running) is left alone: its body has the
receiver's own deadline (``receiver.READ_DEADLINE``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from mirrorhook.addresses import Listen
from mirrorhook.throttle import WARNING_PERIOD, Throttle

logger = logging.getLogger(__name__)

HEADER_DEADLINE = 10.0
"""Seconds a connection has to complete a request's headers, from its opening or its last
response. A webhook's headers are a few hundred bytes sent at once."""
IDLE_TIMEOUT = 5.0
"""Seconds a connection may stay silent, from its opening or its last response. The
publisher opens a connection per webhook, so keep-alive buys mirrorhook nothing."""
MAX_HEADER_BYTES = 16 * 1024
"""Bytes a request line and its headers may take (nginx's default buffers allow 32 KiB in
all; a signed webhook needs well under 1 KiB)."""
MAX_CONNECTIONS = 512
"""Open connections at most. A receiver needs a handful (a webhook per publish, the odd
probe or scrape; the publisher never keeps one open, see ``delivery.py``). The margin is
for shedding: between a new connection's set-up and the reading of its first bytes, up to
two accept batches (``ACCEPT_BATCH``) of newer ones are set up; with room for more, a valid
client's headers are in before the oldest-first shedding reaches it, even when hostile
connections arrive as fast as the loop can accept them."""
ACCEPT_BATCH = 128
"""Connections asyncio accepts per listener and loop iteration (aiohttp's default)."""
ACCEPT_QUEUE = 1024
"""Connections the kernel queues for a listener until they are accepted (capped by
``net.core.somaxconn``)."""


def connection_bound(streams: int = 0) -> int:
    """``MAX_CONNECTIONS`` (plus ``streams``, the event streams a publisher may hold open),
    or a quarter of the open-files limit when that is lower: the other three quarters stay
    free for rsync's pipes, the publisher's deliveries, state files — and for ``accept()``
    itself, which needs a descriptor before a connection can be shed. With streams, three
    quarters: a stream costs one descriptor and nothing else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + streams
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft * 3 // 4 if streams else soft // 4))


@dataclass(frozen=True, slots=True)
class Limits:
    """What a ``ConnectionGuard`` allows; the defaults are the daemon's."""

    header_deadline: float = HEADER_DEADLINE
    idle_timeout: float = IDLE_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int = field(default_factory=connection_bound)
    warning_period: float = WARNING_PERIOD
    accept_queue: int = ACCEPT_QUEUE
    """The kernel's queue of each listener (``ACCEPT_QUEUE``, longer for a publisher that
    takes event streams: they all reconnect at once after its restart)."""

    def __post_init__(self) -> None:
        if not 0 < self.idle_timeout <= self.header_deadline:
            raise ValueError("need 0 < idle_timeout <= header_deadline")
        if self.max_header_bytes < 1 or self.max_connections < 1:
            raise ValueError("max_header_bytes and max_connections must be positive")


def body_read(request: web.Request) -> None:
    """Tell the guard (if the app has one) that ``request``'s body is all in: from now on
    its connection is not shed."""
    if (guard := request.app.get(GUARD)) is not None:
        guard.body_read(request)


class ConnectionGuard:
    """Tracks a web server's connections and enforces ``Limits`` on them.

    Connections come in through ``protocol_factory`` (see ``GuardedSite``); the guard learns
    that a request is in progress from ``middleware``, which must be on the application.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._open: dict[web.RequestHandler, _Connection] = {}
        # Connections without a request in progress, those waiting longest first.
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()
        # Connections whose handler runs but whose request body is not all in yet (a hook's
        # body trickling in): shed next, oldest first, when no idle one is left.
        self._reading: OrderedDict[_Connection, None] = OrderedDict()
        self._shed_warning = Throttle(self.limits.warning_period)

    @property
    def handler_args(self) -> dict[str, Any]:
        """Arguments for aiohttp's request handlers (``web.AppRunner(app, **these)``)."""
        # aiohttp's own keep-alive timer (an hour by default) becomes a mere backstop: at
        # the header deadline it can never close a connection the guard would keep.
        return {"keepalive_timeout": self.limits.header_deadline}

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``server``'s handlers, guarded."""

        def guarded() -> asyncio.Protocol:
            return _Connection(self, server())

        return guarded

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the request's connection busy while its handler runs."""
        connection = self._open.get(request.protocol)
        if connection is None:  # already closed: nothing to guard
            return await handler(request)
        self._waiting.pop(connection, None)
        connection.request_started()
        if request.body_exists:
            self._reading[connection] = None
        try:
            return await handler(request)
        finally:
            self._reading.pop(connection, None)
            if self._open.get(connection.handler) is connection:  # not closed meanwhile
                self._wait(connection)

    def guard(self, app: web.Application) -> None:
        """Put ``middleware`` on ``app`` and let its handlers reach the guard (``body_read``)."""
        app.middlewares.append(self.middleware)
        app[GUARD] = self

    def body_read(self, request: web.Request) -> None:
        """``request``'s body is all in: its connection is no longer shed for newcomers."""
        if (connection := self._open.get(request.protocol)) is not None:
            self._reading.pop(connection, None)

    def _opened(self, connection: _Connection) -> None:
        self._open[connection.handler] = connection
        self._wait(connection)
        if len(self._open) > self.limits.max_connections:
            # The idle connection waiting longest, else the oldest body still trickling
            # in, else the newcomer itself: a hook that has its request in is never shed.
            idle = next((other for other in self._waiting if other is not connection), None)
            self._shed(idle or next(iter(self._reading), connection))

    def _wait(self, connection: _Connection) -> None:
        self._waiting[connection] = None
        self._waiting.move_to_end(connection)
        connection.wait_for_request()

    def _arriving(self, connection: _Connection) -> None:
        # Its request's headers are in: aiohttp runs the handler within an iteration or
        # two. Shedding it now would throw away the one client the guard is there for.
        self._waiting.pop(connection, None)

    def _forget(self, connection: _Connection) -> None:
        self._open.pop(connection.handler, None)
        self._waiting.pop(connection, None)

    def _shed(self, connection: _Connection) -> None:
        connection.close("shed: too many connections")
        if (held := self._shed_warning.due()) is not None:
            logger.warning(
                "more than %d connections: closing those waiting longest for a request "
                "(%d more closed since the last warning, which comes at most every %g s)",
                self.limits.max_connections,
                held,
                self.limits.warning_period,
            )


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's request handler, with the guard in front of it."""

    def __init__(self, guard: ConnectionGuard, handler: web.RequestHandler) -> None:
        self.guard = guard
        self.handler = handler
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None  # None while a request is in progress
        self._headers = _HeaderCounter()

    # -- asyncio.Protocol: everything goes on to aiohttp's handler ------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.handler.connection_made(transport)
        self.guard._opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.guard._forget(self)
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting_since is not None and not self._headers.complete:
            if not self._headers.count:
                # Something arrived: from now on only the header deadline counts.
                self._arm(self._waiting_since + self.guard.limits.header_deadline)
            self._headers.feed(data)
            if self._headers.count > self.guard.limits.max_header_bytes:
                self.close(f"over {self.guard.limits.max_header_bytes} bytes of headers")
                return
            if self._headers.complete:
                self.guard._arriving(self)
        self.handler.data_received(data)

    def eof_received(self) -> None:
        # aiohttp's handler keeps nothing half-open: the transport closes itself.
        self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    # -- the guard's side ------------------------------------------------------------------

    def wait_for_request(self) -> None:
        """Start the wait for a request: silence is allowed for ``idle_timeout``."""
        self._waiting_since = asyncio.get_running_loop().time()
        self._headers = _HeaderCounter()
        self._arm(self._waiting_since + self.guard.limits.idle_timeout)

    def request_started(self) -> None:
        """A request's headers are complete and its handler runs: no deadline applies."""
        self._waiting_since = None
        self._cancel_timer()

    def close(self, reason: str) -> None:
        """Close the connection now (it never has a request in progress)."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        logger.debug("closing the connection from %s: %s", peer or "a unix socket", reason)
        self._cancel_timer()
        self.guard._forget(self)
        self.handler.force_close()
        # close() would wait for unsent bytes (a response the client never reads) and keep
        # the socket, no longer counted, open: drop them and the socket at once.
        if isinstance(self._transport, asyncio.WriteTransport):
            self._transport.abort()

    def _arm(self, when: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._headers.count:
            self.close(f"headers incomplete after {self.guard.limits.header_deadline:g} s")
        else:
            self.close(f"idle for {self.guard.limits.idle_timeout:g} s")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _HeaderCounter:
    """Counts the bytes of a request line and headers, up to the empty line that ends them.

    Empty lines before the request line (which HTTP parsers skip) are counted but do not end
    anything, so a client cannot send an early "end of headers" and then more headers."""

    __slots__ = ("_begun", "_tail", "complete", "count")

    END = b"\r\n\r\n"

    def __init__(self) -> None:
        self.complete = False
        self.count = 0
        self._begun = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        if not self._begun:
            rest = data.lstrip(b"\r\n")
            self.count += len(data) - len(rest)
            if not rest:
                return
            self._begun = True
            data = rest
        window = self._tail + data
        end = window.find(self.END)
        if end < 0:
            self.count += len(data)
            self._tail = window[-(len(self.END) - 1) :]
        else:
            self.count += end + len(self.END) - len(self._tail)
            self.complete = True


class GuardedSite(web.BaseSite):
    """A TCP or unix-socket listener of ``runner`` whose connections pass through ``guard``.

    aiohttp's ``TCPSite`` and ``UnixSite`` give the event loop ``runner.server`` itself as
    the protocol factory; this site gives it the guard's. It registers with the runner like
    them, so ``runner.cleanup()`` stops it before closing the connections.
    """

    __slots__ = ("_address", "_guard", "_listener", "_web_runner")

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, address: Listen) -> None:
        super().__init__(runner)
        self._web_runner = runner
        self._guard = guard
        self._address = address
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return str(self._address)

    async def start(self) -> None:
        await super().start()
        server = self._web_runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        loop = asyncio.get_running_loop()
        factory = self._guard.protocol_factory(server)
        host, port, path = self._address.host, self._address.port, self._address.path
        if path is not None:
            self._listener = await loop.create_unix_server(factory, str(path), backlog=ACCEPT_BATCH)
        elif port is not None:
            self._listener = await loop.create_server(
                factory, host, port, reuse_address=True, backlog=ACCEPT_BATCH
            )
        else:
            raise ValueError(f"{self._address}: neither a port nor a socket path")
        # asyncio's ``backlog`` is both the kernel's queue length (listen()) and the number
        # of connections accepted per loop iteration. Shedding wants the batch short (see
        # MAX_CONNECTIONS), a flood wants the queue long: when it is full the kernel drops
        # a valid client's SYN too, and the client retries only a second later. Linux
        # takes a second listen() on a listening socket as a new queue length.
        for listening in self._listener.sockets:
            with listening.dup() as sock:
                sock.listen(self._guard.limits.accept_queue)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await super().stop()


GUARD = web.AppKey("connection_guard", ConnectionGuard)
