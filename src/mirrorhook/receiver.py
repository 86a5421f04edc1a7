"""The webhook service of a downstream mirror: ``POST /v1/hook`` (and the common endpoints).

The hook handler only verifies and schedules (docs/design.md#receiver-answers): it reads at
most ``max_body`` bytes within a deadline, checks the signature before looking at the body,
drops replays, and hands the trigger to the scheduler. rsync never runs inside a request.
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
from mirrorhook.endpoints import Endpoints, add_routes
from mirrorhook.errors import (
    MarkerUnreadableError,
    PayloadError,
    SignatureError,
    TimestampError,
)
from mirrorhook.metrics import Metrics
from mirrorhook.poller import Poller
from mirrorhook.replay import ReplayCache
from mirrorhook.scheduler import Scheduled, Scheduler
from mirrorhook.status import forget_daemon
from mirrorhook.supervisor import Supervisor
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
    metrics: Metrics
    clock: Callable[[], float] = time.time
    read_deadline: float = READ_DEADLINE
    replays: ReplayCache = field(default_factory=lambda: ReplayCache(signing.TOLERANCE))
    supervisor: Supervisor = field(default_factory=Supervisor)


RECEIVER = web.AppKey("receiver", Receiver)


def make_app(receiver: Receiver) -> web.Application:
    """Return the receiver's web application (routes only; see ``background``)."""
    app = web.Application()
    app[RECEIVER] = receiver
    app.router.add_post(HOOK_PATH, handle_hook)
    add_routes(app, Endpoints(receiver.status, receiver.metrics, receiver.supervisor))
    return app


async def background(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` that runs the scheduler and the poller for the app's lifetime, each
    restarted by the supervisor should it ever stop."""
    receiver = app[RECEIVER]
    keep = receiver.supervisor.keep
    tasks = [
        asyncio.create_task(keep("scheduler", receiver.scheduler.run), name="scheduler"),
        asyncio.create_task(keep("poller", receiver.poller.run, may_finish=True), name="poller"),
    ]
    yield
    for task in tasks:
        task.cancel("receiver shutting down")
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        forget_daemon(receiver.config)
    except OSError as err:
        logger.warning("cannot note the daemon's stop in the state file: %s", err)


async def handle_hook(request: web.Request) -> web.Response:
    """Verify a webhook and schedule a sync (see the answers in docs/design.md#receiver-answers)."""
    receiver = request.app[RECEIVER]
    outcome, response = await _hook(request, receiver)
    receiver.metrics.webhooks.labels(outcome=outcome).inc()
    return response


async def _hook(request: web.Request, receiver: Receiver) -> tuple[str, web.Response]:
    """Answer one webhook; return the outcome's name (for the metrics) and the response."""
    peer = request.remote or "unix socket"
    if request.content_type != "application/json":
        return _refuse("bad_content_type", 415, "content type must be application/json", peer)
    limit = receiver.config.max_body
    if request.content_length is not None and request.content_length > limit:
        return _refuse("too_large", 413, f"body larger than {limit} bytes", peer, close=True)
    try:
        body = await _read_body(request, limit, receiver.read_deadline)
    except _TooLargeError:
        return _refuse("too_large", 413, f"body larger than {limit} bytes", peer, close=True)
    except TimeoutError:
        return _refuse(
            "too_slow",
            408,
            f"body not received within {receiver.read_deadline:g} s",
            peer,
            close=True,
        )

    now = receiver.clock()
    try:
        verified = signing.verify(receiver.config.secret, request.headers, body, now=now)
    except TimestampError as err:
        return _refuse("stale", 401, str(err), peer)
    except SignatureError as err:
        return _refuse("bad_signature", 401, f"bad signature: {err}", peer)
    try:
        update = message.decode(body)
    except PayloadError as err:
        return _refuse("bad_body", 400, str(err), peer)
    if update.marker != receiver.config.marker:
        return _refuse(
            "bad_body",
            400,
            f"webhook is about marker {update.marker!r}, "
            f"this mirror follows {receiver.config.marker!r}",
            peer,
        )
    if receiver.replays.seen(verified.msg_id, verified.timestamp, now):
        logger.info("webhook %s from %s: duplicate, ignored", verified.msg_id, peer)
        return "duplicate", web.json_response({"status": "duplicate"})
    try:
        local = receiver.syncer.local_marker()
    except MarkerUnreadableError as err:
        # Not the sender's fault, and maybe passing (a remount, say): let it retry.
        problem = f"cannot read the local marker: {err.reason}"
        logger.error("webhook %s from %s not accepted: %s", verified.msg_id, peer, problem)
        return "unavailable", web.json_response({"error": problem}, status=503)
    if update.current == local:
        logger.info(
            "webhook %s (%s, marker %r): already up to date",
            verified.msg_id,
            update.source,
            update.current,
        )
        return "up_to_date", web.json_response({"status": "up-to-date"})
    outcome = receiver.scheduler.trigger(
        f"webhook from {update.source or peer}, marker {update.current!r}"
    )
    if isinstance(outcome, Scheduled):
        answer = {"status": "scheduled", "delay": round(outcome.delay, 3)}
        return "scheduled", web.json_response(answer, status=202)
    return "queued", web.json_response({"status": "queued"}, status=202)


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


def _refuse(
    outcome: str, status: int, reason: str, peer: str, *, close: bool = False
) -> tuple[str, web.Response]:
    logger.warning("webhook from %s refused (%d): %s", peer, status, reason)
    response = web.json_response({"error": reason}, status=status)
    if close:
        # The rest of the body is not read: the connection cannot be reused.
        response.force_close()
    return outcome, response
