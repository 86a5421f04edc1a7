"""A receiver's reports to its publisher: remembered across restarts, signed, retried a
few times, dropped with a log line — never in the way of a sync."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web

from mirrorhook import signing
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.reporter import Reporter
from mirrorhook.retry import Backoff
from tests.helpers import ServerFactory, receiver_config, until

FAST = Backoff(first=0.01, cap=0.02)


def tree(tmp_path: Path) -> ReceiverConfig:
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return config


async def test_reports_are_signed_and_the_url_survives_a_restart(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    config = tree(tmp_path)
    received: list[dict[str, object]] = []

    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        signing.verify(config.keys, request.headers, body, now=time.time())
        received.append(json.loads(body))
        return web.json_response({"status": "checking"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/report", take)
    server = await aiohttp_server(app)
    # The upstream calls the repository "ius"; this single-form mirror has no name for it.
    await Reporter(config).remember(str(server.make_url("/v1/report")), "mirror-a", "ius")
    reporter = Reporter(config)  # as after a restart: the URL comes from the state file
    reporter.sync_ended("synced", "7", None)
    reporter.sync_ended("up-to-date", "7", None)  # nothing new: no report
    await until(lambda: received, 10)
    await asyncio.sleep(0.1)
    assert len(received) == 1
    data = received[0]["data"]
    assert isinstance(data, dict)
    assert (received[0]["type"], data["mirror"], data["current"], data["result"]) == (
        "mirror.synced",
        "mirror-a",
        "7",
        "synced",
    )
    assert data["repo"] == "ius"  # the upstream's name: it finds the tree by it


async def test_a_report_that_cannot_be_delivered_is_retried_then_dropped(
    tmp_path: Path, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mirrorhook.reporter")
    config = tree(tmp_path)
    attempts = 0

    async def refuse(_request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        return web.json_response({}, status=500)

    app = web.Application()
    app.router.add_post("/v1/report", refuse)
    server = await aiohttp_server(app)
    reporter = Reporter(config, backoff=FAST)
    await reporter.remember(str(server.make_url("/v1/report")), "mirror-a", None)
    reporter.sync_ended("failed", None, "rsync said no")
    await until(lambda: "dropped" in caplog.text, 10)
    assert attempts == 3
    assert "HTTP 500" in caplog.text
