"""The webhook service of a downstream mirror: ``POST /v1/hook``, ``/v1/status``, ``/healthz``.

The hook handler only verifies and schedules (SPEC §4): it reads at most ``max_body`` bytes
within a deadline, checks the signature before looking at the body, drops replays, and
hands the trigger to the scheduler. rsync never runs inside a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mirrorhook import message, signing
from mirrorhook.config import ReceiverConfig
from mirrorhook.errors import PayloadError, SignatureError, TimestampError
from mirrorhook.poller import Poller
from mirrorhook.replay import ReplayCache
from mirrorhook.scheduler import Scheduled, Scheduler
from mirrorhook.status import forget_daemon
from mirrorhook.syncer import Syncer

logger = logging.getLogger(__name__)

HOOK_PATH = "/v1/hook"
READ_DEADLINE = 10.0
"""Seconds a client has to send a whole webhook body; a trickling body is cut off."""


@dataclass(slots=True)
class Receiver:
    """Everything the receiver's handlers and background tasks share."""

    config: ReceiverConfig
    syncer: Syncer
    scheduler: Scheduler
    poller: Poller
    status: Callable[[], dict[str, Any]]
    clock: Callable[[], float] = time.time
    read_deadline: float = READ_DEADLINE
    replays: ReplayCache = field(default_factory=lambda: ReplayCache(signing.TOLERANCE))


RECEIVER = web.AppKey("receiver", Receiver)


def make_app(receiver: Receiver) -> web.Application:
    """Return the receiver's web application (routes only; see ``background``)."""
    app = web.Application()
    app[RECEIVER] = receiver
    app.router.add_post(HOOK_PATH, handle_hook)
    app.router.add_get("/v1/status", handle_status)
    app.router.add_get("/healthz", handle_health)
    return app


async def background(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` that runs the scheduler and the poller for the app's lifetime."""
    receiver = app[RECEIVER]
    tasks = [
        asyncio.create_task(receiver.scheduler.run(), name="scheduler"),
        asyncio.create_task(receiver.poller.run(), name="poller"),
    ]
    yield
    for task in tasks:
        task.cancel("receiver shutting down")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            logger.error("%s task failed: %s", task.get_name(), result)
    forget_daemon(receiver.config)


async def handle_hook(request: web.Request) -> web.Response:
    """Verify a webhook and schedule a sync (see the status table of SPEC §4)."""
    receiver = request.app[RECEIVER]
    peer = request.remote or "unix socket"
    if request.content_type != "application/json":
        return _refuse(415, "content type must be application/json", peer)
    limit = receiver.config.max_body
    if request.content_length is not None and request.content_length > limit:
        return _refuse(413, f"body larger than {limit} bytes", peer, close=True)
    try:
        body = await _read_body(request, limit, receiver.read_deadline)
    except _TooLargeError:
        return _refuse(413, f"body larger than {limit} bytes", peer, close=True)
    except TimeoutError:
        return _refuse(
            408, f"body not received within {receiver.read_deadline:g} s", peer, close=True
        )

    now = receiver.clock()
    try:
        verified = signing.verify(receiver.config.secret, request.headers, body, now=now)
    except TimestampError as err:
        return _refuse(401, str(err), peer)
    except SignatureError as err:
        return _refuse(401, f"bad signature: {err}", peer)
    try:
        update = message.decode(body)
    except PayloadError as err:
        return _refuse(400, str(err), peer)
    if update.marker != receiver.config.marker:
        return _refuse(
            400,
            f"webhook is about marker {update.marker!r}, "
            f"this mirror follows {receiver.config.marker!r}",
            peer,
        )
    if receiver.replays.seen(verified.msg_id, verified.timestamp, now):
        logger.info("webhook %s from %s: duplicate, ignored", verified.msg_id, peer)
        return web.json_response({"status": "duplicate"})
    if update.current == receiver.syncer.local_marker():
        logger.info(
            "webhook %s (%s, marker %r): already up to date",
            verified.msg_id,
            update.source,
            update.current,
        )
        return web.json_response({"status": "up-to-date"})
    outcome = receiver.scheduler.trigger(
        f"webhook from {update.source or peer}, marker {update.current!r}"
    )
    if isinstance(outcome, Scheduled):
        return web.json_response(
            {"status": "scheduled", "delay": round(outcome.delay, 3)}, status=202
        )
    return web.json_response({"status": "queued"}, status=202)


async def handle_status(request: web.Request) -> web.Response:
    """Return the JSON of ``mirrorhook status --json`` (no secrets, no credentials)."""
    return web.json_response(request.app[RECEIVER].status())


async def handle_health(_request: web.Request) -> web.Response:
    """Answer 200 while the service runs."""
    return web.json_response({"status": "ok"})


class _TooLargeError(Exception):
    pass


async def _read_body(request: web.Request, limit: int, deadline: float) -> bytes:
    """Read the body, giving up beyond ``limit`` bytes (also when chunked) or ``deadline`` s."""
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(deadline):
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise _TooLargeError
            chunks.append(chunk)
    return b"".join(chunks)


def _refuse(status: int, reason: str, peer: str, *, close: bool = False) -> web.Response:
    logger.warning("webhook from %s refused (%d): %s", peer, status, reason)
    response = web.json_response({"error": reason}, status=status)
    if close:
        # The rest of the body is not read: the connection cannot be reused.
        response.force_close()
    return response
