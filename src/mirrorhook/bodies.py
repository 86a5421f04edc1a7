"""Reading a body within bounds, for every endpoint that takes one (webhooks on the
receiver, reports on the publisher) and for a mirror's answer to a check: its media type,
never an exception; the whole body, refused beyond a size (also when chunked) or a deadline
(docs/design.md#connection-limits).
"""

from __future__ import annotations

import asyncio
import email.errors

import aiohttp
from aiohttp import web


class TooLargeError(Exception):
    """The body grew past the limit while it was read."""


def content_type(request: web.Request) -> str:
    """The request's media type; "" when its Content-Type header cannot be parsed."""
    try:
        return request.content_type
    except (ValueError, IndexError, email.errors.MessageError):
        # aiohttp parses the header with the email package, which raises all of these on
        # malformed input (hypothesis found "Content-Type: ;0*"): a 415, never a 500.
        return ""


async def read_body(request: web.Request, limit: int, deadline: float) -> bytes:
    """Read the whole body, however it is split on the wire; raise ``TooLargeError`` beyond
    ``limit`` bytes (at once when Content-Length says so) and ``TimeoutError`` after
    ``deadline`` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError
    async with asyncio.timeout(deadline):
        return await read_stream(request.content, limit)


async def read_stream(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read ``stream`` to its end, however it is split on the wire; raise ``TooLargeError``
    beyond ``limit`` bytes. The caller bounds the time."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > limit:
            raise TooLargeError
        chunks.append(chunk)
    return b"".join(chunks)
