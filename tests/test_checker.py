"""Checks of a mirror's ``check_url``: how much of the answer is read. Real HTTP servers
on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from mirrorhook.checker import MAX_BODY, CheckError, serving
from tests.helpers import until

VALUE = "Wed Nov 25 12:00:00 UTC 2026"


async def check(url: str, **options: float) -> str:
    """What ``url`` serves, or the check's error."""
    async with aiohttp.ClientSession() as session:
        try:
            return await serving(session, url, **options)
        except CheckError as err:
            return f"error: {err}"


TwoPieces = Callable[..., Awaitable[str]]


@pytest.fixture
async def two_pieces() -> AsyncIterator[TwoPieces]:
    """Start raw HTTP servers that send a body in two TCP segments: ``await two_pieces(body,
    length=..., rest=...)`` is one's URL. Each writes its head and the first half of
    ``body``, waits, then the rest (unless not ``rest``); with a Content-Length when
    ``length``, else up to the end of the connection."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    finished: list[asyncio.StreamWriter] = []

    async def start(body: bytes, *, length: bool, rest: bool = True) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await reader.readuntil(b"\r\n\r\n")
                head = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                if length:
                    head += f"Content-Length: {len(body)}\r\n"
                writer.write(head.encode() + b"\r\n" + body[: len(body) // 2])
                await writer.drain()
                # The first piece leaves on its own: asyncio sets TCP_NODELAY.
                await asyncio.sleep(0.1)
                if rest:
                    writer.write(body[len(body) // 2 :])
                    await writer.drain()
                else:
                    await reader.read()  # until the check gives up and hangs up
            finally:
                writer.close()
                finished.append(writer)

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/CURRENT"

    yield start
    for writer in writers:
        writer.close()
    await until(lambda: len(finished) == len(writers))
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_marker_arriving_in_two_pieces_is_read_whole(two_pieces: TwoPieces) -> None:
    """A mirror that writes half its answer's body, waits, then the rest (with a length, or
    up to the end of the connection) is read whole — it was recorded cut short; a body
    that grows past the bound in its second piece is refused, and one whose second piece
    never comes ends at the check's deadline."""
    body = f"{VALUE}\n".encode()
    assert await check(await two_pieces(body, length=True)) == VALUE
    assert await check(await two_pieces(body, length=False)) == VALUE
    too_big = b"1" * (MAX_BODY // 2 + 1) * 2
    assert "larger than" in await check(await two_pieces(too_big, length=False))
    assert await check(await two_pieces(body, length=True, rest=False), timeout=0.5) == (
        "error: no answer within 0.5 s"
    )
