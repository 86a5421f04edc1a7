"""Guarded connections: idle, slow-header, oversized-header and surplus connections are
closed, while valid requests — also ones with slow or large bodies — are answered.

Every test runs the real receiver app through ``listeners.start_web`` on a free port and
talks to it over real sockets, with the limits shortened through ``Limits``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mirrorhook import message, signing
from mirrorhook.addresses import Listen
from mirrorhook.connections import ACCEPT_BATCH, ACCEPT_QUEUE, Limits, _HeaderCounter
from mirrorhook.fleet import build_receiver
from mirrorhook.listeners import start_web
from mirrorhook.message import HOOK_PATH
from mirrorhook.receiver import Receiver, make_app
from tests.helpers import free_port, needs, receiver_config, secret_of, signed_webhook

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    """A receiver whose upstream is never contacted (its background tasks do not run)."""
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    return build_receiver(config)


@contextlib.asynccontextmanager
async def serving(receiver: Receiver, limits: Limits) -> AsyncIterator[tuple[int, web.AppRunner]]:
    """The receiver's app on 127.0.0.1:PORT, guarded by ``limits``; yields port and runner."""
    port = free_port()
    runner = await start_web(make_app(receiver), (Listen(host="127.0.0.1", port=port),), limits)
    try:
        yield port, runner
    finally:
        await runner.cleanup()


async def seconds_until_closed(reader: asyncio.StreamReader, timeout: float) -> float:
    """Read until the server closes the connection; fail after ``timeout`` seconds."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while await reader.read(65536):
                    pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {timeout:g} s")
    return time.monotonic() - started


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length; return its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines if line)
    return int(status_line.split()[1]), await reader.readexactly(int(fields["content-length"]))


def signed_request(receiver: Receiver, padding: int = 0) -> tuple[bytes, bytes]:
    """A valid webhook's request head and body (the JSON padded with ``padding`` spaces)."""
    now = int(time.time())
    body = message.new_update("CURRENT", "2", "test", now).encode() + b" " * padding
    headers = signing.signed_headers(secret_of(receiver.config), uuid.uuid4().hex, now, body)
    head = f"POST {HOOK_PATH} HTTP/1.1\r\nHost: mirror\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode(), body


async def test_idle_connection_is_closed_after_the_idle_timeout(receiver: Receiver) -> None:
    """A connection that never sends a byte is closed after ``idle_timeout``."""
    async with serving(receiver, Limits(idle_timeout=0.5, header_deadline=2.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        elapsed = await seconds_until_closed(reader, 5.0)
        writer.close()
    assert elapsed >= 0.4, elapsed  # not before the idle time; closed within 5 s at all


@pytest.mark.slow
async def test_headers_trickling_line_by_line_are_cut_off_at_the_deadline(
    receiver: Receiver,
) -> None:
    """A header line every 0.5 s, never finishing: the bytes keep coming, yet the connection
    is closed at ``header_deadline`` (and not at the shorter ``idle_timeout``)."""
    async with serving(receiver, Limits(idle_timeout=0.5, header_deadline=2.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        closed = asyncio.create_task(seconds_until_closed(reader, 8.0))
        writer.write(f"POST {HOOK_PATH} HTTP/1.1\r\n".encode())
        lines = 0
        with contextlib.suppress(ConnectionError):
            for lines in range(1, 17):  # 8 s at most
                await asyncio.sleep(0.5)
                if closed.done():
                    break
                writer.write(f"X-Slow-{lines}: {'x' * 40}\r\n".encode())
                await writer.drain()
        await closed
        elapsed = time.monotonic() - started
        writer.close()
    # Closed while the lines still came (they would go on for 8 s), not before the deadline.
    assert 1.8 <= elapsed < 7.5, elapsed
    assert lines >= 3, lines


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    receiver: Receiver,
) -> None:
    """After a complete request and its keep-alive response, a silent connection is closed
    after ``idle_timeout``."""
    async with serving(receiver, Limits(idle_timeout=0.5, header_deadline=2.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\n\r\n")
        status, _ = await read_response(reader)
        elapsed = await seconds_until_closed(reader, 5.0)
        writer.close()
    assert status == 200
    assert elapsed >= 0.4, elapsed  # not before the idle time; closed within 5 s at all


async def test_headers_over_the_byte_budget_close_the_connection_at_once(
    receiver: Receiver,
) -> None:
    """20 KiB of header lines (100 fields, which aiohttp alone would accept) sent at once:
    the connection is closed as soon as the budget is exceeded, not at the deadline."""
    async with serving(receiver, Limits(idle_timeout=5.0, header_deadline=10.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {HOOK_PATH} HTTP/1.1\r\n".encode())
        with contextlib.suppress(ConnectionError):
            for index in range(100):
                writer.write(f"X-Big-{index}: {'x' * 200}\r\n".encode())
            await writer.drain()
        # At once means long before the 10 s deadline or the 5 s idle time could act.
        await seconds_until_closed(reader, 4.0)
        writer.close()


async def test_beyond_the_bound_the_oldest_idle_connections_are_shed_and_valid_requests_answered(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """30 idle connections against a bound of 8: the oldest are closed, the server never holds
    more than 8; a valid webhook and /healthz are still answered at once; one warning."""
    caplog.set_level(logging.WARNING, logger="mirrorhook.connections")
    limits = Limits(idle_timeout=30.0, header_deadline=30.0, max_connections=8)
    async with serving(receiver, limits) as (port, runner):
        idle: list[Stream] = []
        for _ in range(30):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.01)  # let the server accept it: connections keep their order
        await asyncio.sleep(0.2)
        assert runner.server is not None
        held = len(runner.server.connections)
        body, headers = signed_webhook(receiver.config.secret, "2")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(f"http://127.0.0.1:{port}{HOOK_PATH}", data=body,
                                    headers=headers) as response:  # fmt: skip
                hook_status = response.status
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                health_status = response.status
        await asyncio.sleep(0.2)
        still_open = [not reader.at_eof() for reader, _ in idle]
        for _, writer in idle:
            writer.close()
    assert (hook_status, health_status) == (202, 200)
    assert held <= 8, held
    assert not any(still_open[:20]), still_open  # the oldest went first
    assert 1 <= sum(still_open) <= 8, still_open
    warnings = [r for r in caplog.records if "more than 8 connections" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_bodies_trickling_in_cannot_hold_every_connection(receiver: Receiver) -> None:
    """As many connections as the bound, each with a webhook's complete headers and a body
    that trickles in: a new valid webhook still gets its 202 — the oldest trickling body is
    shed for it — while a request whose body is in is never shed."""
    limits = Limits(idle_timeout=30.0, header_deadline=30.0, max_connections=4)
    async with serving(receiver, limits) as (port, _runner):
        slow: list[Stream] = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST {HOOK_PATH} HTTP/1.1\r\nHost: mirror\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            await writer.drain()
            slow.append((reader, writer))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        body, headers = signed_webhook(receiver.config.secret, "2")
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                f"http://127.0.0.1:{port}{HOOK_PATH}", data=body, headers=headers
            ) as reply,
        ):
            hook_status = reply.status
        await asyncio.sleep(0.2)
        closed = [reader.at_eof() for reader, _ in slow]
        for _, writer in slow:
            writer.close()
    assert hook_status == 202
    assert closed[0], closed  # the oldest trickling body made room


@pytest.mark.slow
async def test_valid_requests_with_slow_or_large_bodies_are_not_affected(
    receiver: Receiver,
) -> None:
    """The header deadline and byte budget end with the headers: a body trickling for longer
    than the header deadline, and headers sent together with a body larger than the budget,
    are both answered 202."""
    limits = Limits(idle_timeout=0.2, header_deadline=0.5, max_header_bytes=1024)
    async with serving(receiver, limits) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, body = signed_request(receiver)
        writer.write(head)
        for start in range(0, len(body), len(body) // 4 + 1):  # over about 1.2 s
            await asyncio.sleep(0.3)
            writer.write(body[start : start + len(body) // 4 + 1])
        slow_status, _ = await read_response(reader)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, body = signed_request(receiver, padding=8000)
        writer.write(head + body)
        large_status, _ = await read_response(reader)
        writer.close()
    assert (slow_status, large_status) == (202, 202)


@pytest.mark.slow
async def test_accept_failing_for_lack_of_descriptors_is_logged_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """With the open-files limit reached, asyncio's accept() fails and retries every second,
    reporting each pending connection: one warning in all, no traceback per failure; once
    descriptors are free again, the pending connections are served."""
    caplog.set_level(logging.WARNING)
    limits = Limits(idle_timeout=30.0, header_deadline=30.0, max_connections=64)
    async with serving(receiver, limits) as (port, runner):
        # The handshakes complete in the kernel's backlog; the server has not accepted yet.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = {int(path.name) for path in Path("/proc/self/fd").iterdir()}
        lowest_free = min(set(range(len(in_use) + 1)) - in_use)
        # A new descriptor takes the lowest free number: two more, then EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 2, hard))
        try:
            await asyncio.sleep(2.5)  # two retries by asyncio
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert runner.server is not None
        server = runner.server
        async with asyncio.timeout(10):  # the next retry (within a second) accepts them all
            while len(server.connections) < 40:
                await asyncio.sleep(0.05)
        served = len(server.connections)
        for client in clients:
            client.close()
    failures = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].levelno == logging.WARNING
    assert served == 40, served


@needs("ss", package="iproute2")
async def test_the_kernel_queues_more_connections_than_asyncio_accepts_at_once(
    receiver: Receiver,
) -> None:
    """The listener's queue is ACCEPT_QUEUE long (ss shows it as Send-Q), not asyncio's
    accept batch: under a flood of connections, a valid client's SYN is queued, not
    dropped to be retried a second later."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    async with serving(receiver, Limits()) as (port, _):
        listing = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
    assert ACCEPT_BATCH < ACCEPT_QUEUE
    assert int(listing[2]) == min(ACCEPT_QUEUE, somaxconn), listing


@pytest.mark.parametrize(
    ("chunks", "complete", "count"),
    [
        ([b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"], True, 27),
        ([b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\nBODY"], True, 27),
        ([b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\n", b"X: y\r\n"], False, 28),
        ([b"\r\n\r\nX: y\r\n\r\n"], True, 12),
    ],
)
def test_header_counter_finds_the_end_of_the_headers(
    chunks: list[bytes], complete: bool, count: int
) -> None:
    """The end of the headers is found across chunks; the body is not counted; empty lines
    before the request line are counted but end nothing."""
    counter = _HeaderCounter()
    for chunk in chunks:
        counter.feed(chunk)
    assert (counter.complete, counter.count) == (complete, count)
