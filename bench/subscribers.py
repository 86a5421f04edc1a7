"""Many subscribers in one process, for bench.subscriptions: event streams or MQTT topics.

Test tooling, not a product client. ``events`` opens ``--clients`` server-sent event streams
(``GET`` with ``Accept: text/event-stream``, HTTP/1.1 chunked as aiohttp answers, only the
``id:`` and ``data:`` lines read); ``mqtt`` opens as many MQTT 3.1.1 subscriptions (CONNECT
with a clean session, SUBSCRIBE with QoS 1, PUBACK for each QoS 1 PUBLISH, PINGREQ for the
keep-alive: the least a QoS 1 subscriber needs, written here on plain asyncio protocols so
that 10,000 fit in a few processes of a 2-core machine). Neither verifies signatures: the
time measured is when the announcement's bytes are in the subscriber's hands; the mirrors
of bench.subscriptions verify theirs.

A subscriber that loses its connection reconnects as a mirror's follower does
(``subscription.Follower``): after U(0.5, 1) s, doubling with each failed attempt, an event
stream with ``Last-Event-ID``. With ``--spread S`` the first attempt after losing an
established connection waits U(0, S) s instead: what reconnections spread over S seconds
(by the publisher's ``retry:`` hint, say) would do. Streams are opened over ``--ramp``
seconds at the start. Each event is appended to ``--out``, in batches every ``FLUSH``
seconds, as a line:

    connected CLIENT CONNECTION UNIX_TIME     (the 200 answer's headers, or the SUBACK)
    announced CLIENT CONNECTION VALUE UNIX_TIME   (an announcement of marker VALUE)
    failed CLIENT CONNECTION UNIX_TIME REASON

``probe`` GETs ``--url`` (``/healthz``) every ``--every`` seconds on a new connection and
appends ``probe START_UNIX_TIME SECONDS STATUS`` (``-`` and the error when it failed).

    python -m bench.subscribers events --url http://127.0.0.1:PORT/v1/events --clients 2500
        --out F
    python -m bench.subscribers mqtt --url mqtt://127.0.0.1:PORT/TOPIC --clients 2500 --out F
    python -m bench.subscribers probe --url http://127.0.0.1:PORT/healthz --out F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import resource
import signal
import struct
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from mirrorhook.retry import Backoff
from mirrorhook.subscription import (
    FIRST_RECONNECT_WAIT,
    HEALTHY,
    MAX_RECONNECT_WAIT,
    READ_DEADLINE,
)

FLUSH = 0.1
"""Seconds between two writes of the collected lines."""
SWEEP = 5.0
"""Seconds between two rounds of keep-alive pings and read deadlines."""
CONNECT_TIMEOUT = 10.0
"""Seconds to connect and be subscribed, as the follower's transports allow."""
KEEPALIVE = 30
"""The MQTT keep-alive the receiver asks for (``subscribe_mqtt.KEEPALIVE``)."""
MAX_LINE = 65536
"""Bytes an SSE stream may hold unparsed: beyond, the stream is dropped as broken."""


class Lines:
    """The lines of one process, written to its file in batches."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a")
        self._pending: list[str] = []

    def add(self, line: str) -> None:
        self._pending.append(line)

    def flush(self) -> None:
        if self._pending:
            self._file.write("".join(self._pending))
            self._file.flush()
            self._pending.clear()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH)
            self.flush()


def current_of(data: bytes) -> str:
    """The marker value an envelope announces (its body's ``data.current``)."""
    envelope = json.loads(data)
    value: str = json.loads(envelope["body"])["data"]["current"]
    return value


_RECEIVED = memoryview(bytearray(65536))
"""Where every connection of the process receives: each read is consumed at once. asyncio's
plain protocols receive into a new 256 KiB buffer per read, which doubled the subscribers'
CPU time here (70 µs an event instead of 35)."""


class Connection(asyncio.BufferedProtocol):
    """What both protocols share: the client they serve, their end, the last byte's time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future[bool] = loop.create_future()
        """True once subscribed; False when the connection ended before."""
        self.closed: asyncio.Future[str] = loop.create_future()
        """Why the connection ended."""
        self.transport: asyncio.Transport | None = None
        self.heard = time.monotonic()
        self.sent = self.heard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVED

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_RECEIVED[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(str(exc) if exc else "the connection ended")

    def _ended(self, reason: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(False)
        if not self.closed.done():
            self.closed.set_result(reason)

    def now_subscribed(self, now: float) -> None:
        self.subscribed.set_result(True)
        self.client.connected(now)

    def fail(self, reason: str) -> None:
        self._ended(reason)
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.sent = time.monotonic()
        self.transport.write(data)

    def sweep(self, now: float) -> None:
        """Drop a connection silent past its read deadline (and ping, where that is the
        protocol's keep-alive)."""


class EventStream(Connection):
    """One ``GET /v1/events``: the answer's headers, then the chunked body's events."""

    def __init__(self, client: Client, request: bytes) -> None:
        super().__init__(client)
        self._request = request
        self._head = b""
        self._chunks = b""
        """The chunked body not yet decoded."""
        self._chunk_left = 0
        """Bytes of the current chunk still to come (then its CRLF)."""
        self._events = b""
        """The decoded body not yet split into events."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.heard = time.monotonic()
        if not self.subscribed.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end == -1:
                if len(self._head) > MAX_LINE:
                    self.fail("answer headers too long")
                return
            head, data = self._head[:end].lower(), self._head[end + 4 :]
            self._head = b""
            if not head.startswith(b"http/1.1 200"):
                self.fail(head.split(b"\r\n", 1)[0].decode("latin-1"))
                return
            if b"content-type: text/event-stream" not in head or b"chunked" not in head:
                self.fail("not a chunked event stream")
                return
            self.now_subscribed(now)
        self._dechunk(data)
        while (end := self._events.find(b"\n\n")) != -1:
            event, self._events = self._events[:end], self._events[end + 2 :]
            self._event(event, now)
        if len(self._events) > MAX_LINE:
            self.fail("an event longer than allowed")

    def _dechunk(self, data: bytes) -> None:
        self._chunks += data
        while self._chunks:
            if self._chunk_left:
                piece = self._chunks[: self._chunk_left]
                self._events += piece
                self._chunk_left -= len(piece)
                self._chunks = self._chunks[len(piece) :]
                if self._chunk_left:
                    return
                self._chunk_left = -2  # its CRLF
            if self._chunk_left < 0:
                if len(self._chunks) < 2:
                    return
                self._chunks, self._chunk_left = self._chunks[2:], 0
                continue
            end = self._chunks.find(b"\r\n")
            if end == -1:
                return
            size = int(self._chunks[:end].split(b";", 1)[0], 16)
            if size == 0:
                self.fail("the stream ended")
                return
            self._chunks, self._chunk_left = self._chunks[end + 2 :], size

    def _event(self, event: bytes, now: float) -> None:
        data = None
        for line in event.split(b"\n"):
            if line.startswith(b"id: "):
                self.client.last_id = line[4:].decode("ascii", "replace")
            elif line.startswith(b"retry: ") and line[7:].isdigit():
                self.client.retry_hint = int(line[7:]) / 1000  # as the follower honours it
            elif line.startswith(b"data: "):
                data = line[6:]
        if data is not None:
            self.client.announced(current_of(data), now)

    def sweep(self, now: float) -> None:
        if now - self.heard > READ_DEADLINE:
            self.fail(f"nothing received for {READ_DEADLINE:g} s")


def _length(value: int) -> bytes:
    """MQTT's variable-length encoding of a remaining length."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


PINGREQ = b"\xc0\x00"


class MqttSubscription(Connection):
    """One MQTT 3.1.1 session: CONNECT, SUBSCRIBE (QoS 1), then PUBLISH after PUBLISH."""

    def __init__(self, client: Client, client_id: str, topic: str) -> None:
        super().__init__(client)
        self._client_id = client_id
        self._topic = topic
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        flags = 0x02  # clean session, as the receiver's
        variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE)
        self.send(_packet(0x10, variable + _string(self._client_id)))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.heard = time.monotonic()
        self._buffer += data
        while (packet := self._next()) is not None:
            self._packet(packet[0], packet[1], now)

    def _next(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        length, shift, index = 0, 0, 1
        while True:
            if index >= len(buffer):
                return None
            digit = buffer[index]
            length |= (digit & 0x7F) << shift
            index += 1
            if not digit & 0x80:
                break
            shift += 7
        if len(buffer) < index + length:
            return None
        self._buffer = buffer[index + length :]
        return buffer[0], buffer[index : index + length]

    def _packet(self, header: int, body: bytes, now: float) -> None:
        kind = header >> 4
        if kind == 2:  # CONNACK
            if body[1:2] != b"\x00":
                self.fail(f"CONNACK refused: {body[1:2].hex()}")
                return
            topic = _string(self._topic) + b"\x01"
            self.send(_packet(0x82, struct.pack("!H", 1) + topic))
        elif kind == 9:  # SUBACK
            if body[2:3] not in (b"\x00", b"\x01"):
                self.fail(f"SUBACK refused: {body[2:3].hex()}")
                return
            self.now_subscribed(now)
        elif kind == 3:  # PUBLISH
            qos = (header >> 1) & 3
            (topic_length,) = struct.unpack_from("!H", body)
            start = 2 + topic_length
            if qos:
                self.send(b"\x40\x02" + body[start : start + 2])  # PUBACK
                start += 2
            self.client.announced(current_of(body[start:]), now)

    def sweep(self, now: float) -> None:
        if now - self.heard > 1.5 * KEEPALIVE:
            self.fail(f"nothing received for {1.5 * KEEPALIVE:g} s")
        elif now - self.sent >= KEEPALIVE / 2:
            self.send(PINGREQ)


class Client:
    """One subscriber: it keeps a connection, reconnecting with the follower's backoff."""

    def __init__(
        self, index: int, lines: Lines, open_connection: Callable[[Client], Connection]
    ) -> None:
        self.index = index
        self.lines = lines
        self.open_connection = open_connection
        self.connection: Connection | None = None
        self.number = 0
        """How many connections it has had (the current one's number)."""
        self.last_id: str | None = None
        self.retry_hint: float | None = None
        """The stream's retry: when it ended (a publisher's shutdown spreads its return)."""

    def connected(self, now: float) -> None:
        self.lines.add(f"connected {self.index} {self.number} {now:.6f}\n")

    def announced(self, value: str, now: float) -> None:
        self.lines.add(f"announced {self.index} {self.number} {value} {now:.6f}\n")

    async def run(
        self, host: str, port: int, start: float, backoff: Backoff, spread: float
    ) -> None:
        await asyncio.sleep(start)
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self.number += 1
            connection = self.open_connection(self)
            since = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(functools.partial(_same, connection), host, port)
                    subscribed = await connection.subscribed
                if subscribed:
                    since = time.monotonic()
                    self.connection = connection
                reason = await connection.closed
            except (OSError, TimeoutError) as err:
                reason = str(err) or type(err).__name__
                connection.fail(reason)
            self.connection = None
            self.lines.add(f"failed {self.index} {self.number} {time.time():.6f} {reason}\n")
            healthy = since is not None and time.monotonic() - since >= HEALTHY
            failures = 1 if healthy else failures + 1
            hint, self.retry_hint = self.retry_hint, None
            if hint is not None:  # what the receiver's follower does (subscription.py)
                await asyncio.sleep(hint)
            elif spread and since is not None:  # what a spread-out reconnection would do
                await asyncio.sleep(random.uniform(0, spread))
            else:
                await asyncio.sleep(backoff.delay(max(1, failures)))


def _same(connection: Connection) -> Connection:
    return connection


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def subscribe(
    kind: str, url: str, clients: int, out: Path, *, ramp: float, spread: float
) -> None:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = Lines(out)

    def open_connection(client: Client) -> Connection:
        if kind == "mqtt":
            name = f"bench-{os.getpid()}-{client.index}"
            return MqttSubscription(client, name, parts.path.lstrip("/"))
        resume = f"Last-Event-ID: {client.last_id}\r\n" if client.last_id else ""
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{resume}\r\n"
        )
        return EventStream(client, request.encode())

    everyone = [Client(index, lines, open_connection) for index in range(clients)]
    backoff = Backoff(first=FIRST_RECONNECT_WAIT, cap=MAX_RECONNECT_WAIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP)
            now = time.monotonic()
            for client in everyone:
                if client.connection is not None:
                    client.connection.sweep(now)

    # Held here, cancelled at SIGTERM: the subscribers run until the benchmark ends them.
    tasks = [
        asyncio.create_task(client.run(host, port, ramp * client.index / clients, backoff, spread))
        for client in everyone
    ]
    tasks += [asyncio.create_task(lines.run()), asyncio.create_task(sweep())]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lines.flush()


async def probe(url: str, every: float, out: Path) -> None:
    """GET ``url`` every ``every`` seconds, each on a new connection, until SIGTERM."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    lines = Lines(out)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def once() -> None:
        began, started = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request.encode())
                answer = await reader.read()
                writer.close()
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "?"
            lines.add(f"probe {began:.6f} {time.perf_counter() - started:.6f} {status}\n")
        except (OSError, TimeoutError) as err:
            reason = str(err).replace(" ", "_") or type(err).__name__
            lines.add(f"probe {began:.6f} - {reason}\n")

    writer = asyncio.create_task(lines.run())
    probes: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    while not stop.is_set():
        # On a fixed cadence, each in a task of its own: a slow answer delays no later probe.
        task = asyncio.create_task(once())
        probes.add(task)
        task.add_done_callback(probes.discard)
        next_at += every
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                await stop.wait()
    await asyncio.gather(*probes, return_exceptions=True)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    lines.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["events", "mqtt", "probe"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=2500)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--spread", type=float, default=0.0)
    parser.add_argument("--every", type=float, default=0.05)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    raise_open_files_limit()
    if args.kind == "probe":
        asyncio.run(probe(args.url, args.every, args.out))
    else:
        subscribing = subscribe(
            args.kind, args.url, args.clients, args.out, ramp=args.ramp, spread=args.spread
        )
        asyncio.run(subscribing)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
