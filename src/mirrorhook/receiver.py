"""The webhook service of a downstream mirror: ``POST /v1/hook`` (and the common endpoints).

The hook handler only reads and hands over (docs/design.md#receiver-answers): it reads at
most ``max_body`` bytes within a deadline and gives them to the tree's intake, which checks
the signature before looking at the body, drops replays and schedules (``intake.py``); the
handler turns the outcome into the HTTP answer. rsync never runs inside a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mirrorhook import connections
from mirrorhook.bodies import TooLargeError, content_type, read_body
from mirrorhook.endpoints import Endpoints, add_routes
from mirrorhook.intake import Announcement, Intake, Result
from mirrorhook.message import HOOK_PATH
from mirrorhook.metrics import Metrics, TreeMetrics
from mirrorhook.poller import Poller
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_state import DaemonNotes, forget_daemon
from mirrorhook.reporter import Reporter
from mirrorhook.scheduler import Scheduler
from mirrorhook.subscription import Follower
from mirrorhook.supervisor import Supervisor
from mirrorhook.syncer import Syncer
from mirrorhook.throttle import WARNING_PERIOD, Throttle
from mirrorhook.trigger import Via

logger = logging.getLogger(__name__)

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
    tree_metrics: TreeMetrics
    reporter: Reporter
    notes: DaemonNotes
    """The live note for ``status`` that the scheduler and the poller keep up to date."""
    intake: Intake
    """Verifies what the webhooks (and the tree's subscriptions) bring, and schedules."""
    followers: tuple[Follower, ...] = ()
    """The tree's subscriptions, each kept open by its follower."""
    read_deadline: float = READ_DEADLINE
    supervisor: Supervisor = field(default_factory=Supervisor)
    refusals: dict[str, Throttle] = field(default_factory=dict)
    """One warning a minute per kind of refusal of a request (its type, size or pace): a
    flood must not flood the log. The intake has its own for signatures and bodies."""


RECEIVERS = web.AppKey("receivers", dict[str | None, Receiver])
"""The trees an app serves by repository name; ``None`` names the single form's one tree."""
UNKNOWN = web.AppKey("unknown_repository_log", Throttle)
"""One warning a minute about webhooks for repositories this mirror does not carry."""


def make_app(*receivers: Receiver, endpoints: Endpoints | None = None) -> web.Application:
    """Return the receiver's web application (routes only; see ``background``).

    One receiver of the single form answers at ``/v1/hook``; the repositories of the host
    form each at ``/v1/hook/NAME``. ``endpoints`` default to the first receiver's.
    """
    app = web.Application()
    app[RECEIVERS] = {receiver.config.name: receiver for receiver in receivers}
    app[UNKNOWN] = Throttle(WARNING_PERIOD)
    if None in app[RECEIVERS]:
        app.router.add_post(HOOK_PATH, handle_hook)
    else:
        app.router.add_post(HOOK_PATH + "/{repo}", handle_hook)
        app.router.add_post(HOOK_PATH, handle_hook)  # answers which URLs to use instead
    first = receivers[0]
    add_routes(app, endpoints or Endpoints(first.status, first.metrics, first.supervisor))
    return app


async def background(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` that runs the scheduler and the poller of every enabled tree for the
    app's lifetime, each restarted by the supervisor should it ever stop."""
    running = {name: start_tasks(receiver) for name, receiver in app[RECEIVERS].items()}
    yield
    await asyncio.gather(
        *(stop_tasks(app[RECEIVERS][name], tasks) for name, tasks in running.items())
    )


def start_tasks(receiver: Receiver) -> list[asyncio.Task[None]]:
    """Start a tree's scheduler, poller and subscriptions under the supervisor, in that
    order (none when the tree is disabled)."""
    if not receiver.config.enabled:
        return []
    keep = receiver.supervisor.keep
    prefix = f"{receiver.config.name} " if receiver.config.name else ""
    return [
        asyncio.create_task(keep(f"{prefix}scheduler", receiver.scheduler.run)),
        asyncio.create_task(keep(f"{prefix}poller", receiver.poller.run, may_finish=True)),
        *(
            asyncio.create_task(keep(f"{prefix}subscription {follower.seen.url}", follower.run))
            for follower in receiver.followers
        ),
        *(
            [asyncio.create_task(keep(f"{prefix}snapshots", functools.partial(expiry, receiver)))]
            if receiver.config.publish == "snapshot"
            else []
        ),
    ]


async def expiry(receiver: Receiver) -> None:
    """Remove the snapshots whose grace has passed, a tenth of ``grace`` after another
    (within 1..60 s), between syncs."""
    interval = min(max(receiver.config.grace / 10, 1.0), 60.0)
    while True:
        await asyncio.sleep(interval)
        await receiver.syncer.expire_snapshots()


async def stop_tasks(
    receiver: Receiver, tasks: list[asyncio.Task[None]], *, forget: bool = True
) -> None:
    """Stop a tree's tasks as at shutdown (a running rsync is terminated, the marker left as
    it was) and, with ``forget``, note in its state file that no daemon serves it any more
    (not when a reload has already handed the tree to a successor)."""
    for task in tasks:
        task.cancel("receiver shutting down")
    await asyncio.gather(*tasks, return_exceptions=True)
    await receiver.notes.flush()  # the stopped tasks' last notes land before the one below
    if not forget:
        return
    try:
        await forget_daemon(receiver.config)
    except OSError as err:
        logger.warning("cannot note the daemon's stop in the state file: %s", err)


async def handle_hook(request: web.Request) -> web.Response:
    """Verify a webhook and schedule a sync (see the answers in docs/design.md#receiver-answers)."""
    name = request.match_info.get("repo")
    receiver = request.app[RECEIVERS].get(name)
    if receiver is None:
        names = ", ".join(f"{HOOK_PATH}/{known}" for known in request.app[RECEIVERS])
        reason = f"no repository {name!r} on this mirror (its hooks: {names})"
        request.app[UNKNOWN].refused("webhook", request.remote or "unix socket", 404, reason)
        return web.json_response({"error": reason}, status=404)
    if not receiver.config.enabled:
        logger.debug("webhook for %s: the repository is disabled, nothing scheduled", name)
        receiver.tree_metrics.webhook("disabled")
        return web.json_response({"status": "disabled"})
    outcome, response = await _hook(request, receiver)
    receiver.tree_metrics.webhook(outcome)
    return response


async def _hook(request: web.Request, receiver: Receiver) -> tuple[str, web.Response]:
    """Answer one webhook; return the outcome's name (for the metrics) and the response."""
    peer = request.remote or "unix socket"
    if content_type(request) != "application/json":
        return _refuse(
            receiver, "bad_content_type", 415, "content type must be application/json", peer
        )
    limit = receiver.config.max_body
    try:
        body = await read_body(request, limit, receiver.read_deadline)
        connections.body_read(request)
    except TooLargeError:
        return _refuse(
            receiver, "too_large", 413, f"body larger than {limit} bytes", peer, close=True
        )
    except TimeoutError:
        return _refuse(
            receiver,
            "too_slow",
            408,
            f"body not received within {receiver.read_deadline:g} s",
            peer,
            close=True,
        )

    outcome = await receiver.intake.take(Announcement(request.headers, body, Via.WEBHOOK, peer))
    result = outcome.result
    if result.refused:
        status = 400 if result is Result.BAD_BODY else 401
        return result, web.json_response({"error": outcome.reason}, status=status)
    if result is Result.UNAVAILABLE:
        return result, web.json_response({"error": outcome.reason}, status=503)
    if result is Result.SCHEDULED:
        answer = {"status": "scheduled", "delay": round(outcome.delay or 0.0, 3)}
        return result, web.json_response(answer, status=202)
    if result is Result.QUEUED:
        return result, web.json_response({"status": "queued"}, status=202)
    return result, web.json_response({"status": _ANSWERS[result]})


_ANSWERS = {Result.DUPLICATE: "duplicate", Result.UP_TO_DATE: "up-to-date"}


def _refuse(
    receiver: Receiver,
    outcome: str,
    status: int,
    reason: str,
    peer: str,
    *,
    close: bool = False,
) -> tuple[str, web.Response]:
    if (throttle := receiver.refusals.get(outcome)) is None:
        throttle = receiver.refusals[outcome] = Throttle(WARNING_PERIOD)
    throttle.refused("webhook", peer, status, reason)
    response = web.json_response({"error": reason}, status=status)
    if close:
        # The rest of the body is not read: the connection cannot be reused.
        response.force_close()
    return outcome, response
