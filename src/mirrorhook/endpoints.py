"""The HTTP endpoints every daemon serves: ``/v1/status``, ``/healthz`` and ``/metrics``.

A receiver adds ``POST /v1/hook`` (see ``receiver.py``); a publisher without a receiver
serves these on ``publisher.listen``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mirrorhook.metrics import CONTENT_TYPE, Metrics
from mirrorhook.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the common endpoints show: the host's status and its metrics."""

    status: Callable[[], dict[str, Any]]
    metrics: Metrics
    supervisor: Supervisor = field(default_factory=Supervisor)


ENDPOINTS = web.AppKey("endpoints", Endpoints)


def make_app(endpoints: Endpoints) -> web.Application:
    """Return an application with the common endpoints."""
    app = web.Application()
    add_routes(app, endpoints)
    return app


def add_routes(app: web.Application, endpoints: Endpoints) -> None:
    """Add the common endpoints to ``app``."""
    app[ENDPOINTS] = endpoints
    app.router.add_get("/v1/status", handle_status)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/metrics", handle_metrics)


async def handle_status(request: web.Request) -> web.Response:
    """Return the JSON of ``mirrorhook status --json`` (no secrets, no credentials), with
    the daemon's health."""
    endpoints = request.app[ENDPOINTS]
    return web.json_response({**endpoints.status(), "health": endpoints.supervisor.health()})


async def handle_health(request: web.Request) -> web.Response:
    """Answer 200 while every task of the daemon runs, 503 naming those that do not."""
    supervisor = request.app[ENDPOINTS].supervisor
    return web.json_response(supervisor.health(), status=200 if supervisor.healthy else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    """Return every metric in the Prometheus text format."""
    body = request.app[ENDPOINTS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
