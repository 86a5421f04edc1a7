"""The HTTP endpoints every daemon serves: ``/v1/status``, ``/healthz`` and ``/metrics``.

A receiver adds ``POST /v1/hook`` (see ``receiver.py``); a publisher without a receiver
serves these on ``publisher.listen``. ``/v1/status`` (it reads every state file) and
``/metrics`` (a thousand mirrors' series) are rendered at most once a second, in a worker
thread (``response_cache.py``); ``/healthz`` answers from memory, always now.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mirrorhook.metrics import CONTENT_TYPE, Metrics
from mirrorhook.response_cache import Body, ResponseCache
from mirrorhook.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the common endpoints show: the host's status and its metrics."""

    status: Callable[[], dict[str, Any]]
    """The host's status; called in a worker thread (it reads state files, and only reads)."""
    metrics: Metrics
    supervisor: Supervisor = field(default_factory=Supervisor)


ENDPOINTS = web.AppKey("endpoints", Endpoints)
Status = tuple[Callable[[], dict[str, Any]], dict[str, Any]]
"""What ``/v1/status`` renders: the status to call, and the health taken on the loop."""
STATUS = web.AppKey("status_answer", ResponseCache[None, Status, Body])
METRICS = web.AppKey("metrics_answer", ResponseCache[None, Metrics, Body])


def make_app(endpoints: Endpoints) -> web.Application:
    """Return an application with the common endpoints."""
    app = web.Application()
    add_routes(app, endpoints)
    return app


def add_routes(app: web.Application, endpoints: Endpoints) -> None:
    """Add the common endpoints to ``app``."""
    app[ENDPOINTS] = endpoints
    app[STATUS] = ResponseCache(_status)
    app[METRICS] = ResponseCache(_metrics)
    app.router.add_get("/v1/status", handle_status)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/metrics", handle_metrics)


async def handle_status(request: web.Request) -> web.Response:
    """Return the JSON of ``mirrorhook status --json`` (no secrets, no credentials), with
    the daemon's health."""
    endpoints = request.app[ENDPOINTS]
    body = await request.app[STATUS].get(
        None, lambda: (endpoints.status, endpoints.supervisor.health())
    )
    return body.response(request, "application/json; charset=utf-8")


async def handle_health(request: web.Request) -> web.Response:
    """Answer 200 while every task of the daemon runs, 503 naming those that do not."""
    supervisor = request.app[ENDPOINTS].supervisor
    return web.json_response(supervisor.health(), status=200 if supervisor.healthy else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    """Return every metric in the Prometheus text format."""
    metrics = request.app[ENDPOINTS].metrics
    body = await request.app[METRICS].get(None, lambda: metrics)
    return body.response(request, CONTENT_TYPE)


def _status(taken: Status) -> Body:
    status, health = taken
    return Body.of(json.dumps({**status(), "health": health}).encode())


def _metrics(metrics: Metrics) -> Body:
    return Body.of(metrics.render())
