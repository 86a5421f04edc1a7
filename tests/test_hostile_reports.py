"""Hostile input, property-based, against the publisher's ``POST /v1/report``: random
headers, bodies and signatures never make a 5xx, and only a report verified with that
mirror's own secret is ever recorded as it says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mirrorhook import marker, reports, signing
from mirrorhook.checker import Checker
from mirrorhook.config import load_config
from mirrorhook.errors import MarkerError
from mirrorhook.freshness import Freshness
from mirrorhook.message import REPORT_PATH, REPORT_TYPE
from mirrorhook.public_addresses import public_session
from mirrorhook.publisher_config import PublisherHost
from tests.helpers import mirror_secret, publisher_toml

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
MARKERS = st.from_regex(r"\s?[0-9A-Za-z.:-]{1,20}\s?", fullmatch=True)
"""Values a marker may have (with the blanks a marker file's line may carry)."""
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@dataclass
class Desk:
    """A real report desk on a real server, for synchronous hypothesis examples; mirror
    ``plain`` has no check_url, so a verified report of it is recorded as it says."""

    loop: asyncio.AbstractEventLoop
    client: TestClient[web.Request, web.Application]
    freshness: Freshness
    secret: signing.Secret

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        async def send() -> int:
            async with self.client.post(REPORT_PATH, data=body, headers=headers) as answer:
                await answer.read()
                return answer.status

        return self.loop.run_until_complete(send())


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    (tmp_path / "repo").mkdir()
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("plain", "http://m/")])
    config = load_config(path).publisher
    assert config is not None
    loop = asyncio.new_event_loop()
    freshness = Freshness(config)

    sessions = contextlib.AsyncExitStack()

    async def start() -> TestClient[web.Request, web.Application]:
        session = await sessions.enter_async_context(aiohttp.ClientSession())
        public = await sessions.enter_async_context(public_session())
        front = reports.ReportDesk(PublisherHost(config.state_dir, (config,)))
        front.checkers[None] = Checker(freshness, session, public=public)
        app = web.Application()
        reports.add_routes(app, front)
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    try:
        yield Desk(loop, client, freshness, mirror_secret(tmp_path, "plain"))
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(sessions.aclose())
        loop.close()


SETTINGS = settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type", "X-Other"]
        ),
        HEADER_TEXT,
    ),
    body=st.binary(max_size=300) | JSON.map(lambda doc: json.dumps(doc).encode()),
)
def test_random_reports_never_fail_and_are_never_recorded(
    desk: Desk, headers: dict[str, str], body: bytes
) -> None:
    status = desk.post(body, headers)
    assert status < 500
    assert "last_check" not in desk.freshness.mirrors["plain"]


@SETTINGS
@given(
    data=st.fixed_dictionaries(
        {"mirror": st.sampled_from(["plain", "other"]), "result": st.sampled_from(["synced", "x"])},
        optional={"current": MARKERS | JSON, "repo": JSON, "error": JSON},
    ),
    signer=st.sampled_from(["right", "wrong", "none"]),
    offset=st.integers(min_value=-600, max_value=600),
)
@example(data={"mirror": "plain", "result": "synced", "current": " 42 "}, signer="right", offset=0)
@example(data={"mirror": "plain", "result": "synced", "current": "a\nb"}, signer="right", offset=0)
def test_only_a_report_signed_with_the_mirrors_secret_is_recorded(
    desk: Desk, data: dict[str, Any], signer: str, offset: int
) -> None:
    desk.freshness.mirrors["plain"].clear()
    body = json.dumps({"type": REPORT_TYPE, "timestamp": "t", "data": data}).encode()
    headers = {"Content-Type": "application/json"}
    now = int(time.time()) + offset
    if signer != "none":
        key = desk.secret if signer == "right" else signing.Secret.parse(signing.new_secret())
        headers |= signing.signed_headers(key, f"id-{time.time_ns()}", now, body)
    status = desk.post(body, headers)
    assert status < 500
    recorded = "last_check" in desk.freshness.mirrors["plain"]
    event(f"{signer}: {'recorded' if recorded else status}")
    genuine = signer == "right" and abs(offset) <= signing.TOLERANCE - 5
    if recorded:
        assert signer == "right"
        assert data["mirror"] == "plain"
        claimed = data.get("current")
        expected = None  # a failure, or a claim that is no marker: nothing served recorded
        if data["result"] == "synced" and isinstance(claimed, str):
            with contextlib.suppress(MarkerError):
                expected = marker.value_of(claimed.encode(), "the claim") or None
        assert desk.freshness.mirrors["plain"].get("serving") == expected
        event("recorded as synced" if expected else "recorded as failed")
    # (One tree: data.repo, when a string, is not needed to find the mirror.)
    elif genuine and data["mirror"] == "plain" and isinstance(data.get("repo"), str | None):
        raise AssertionError(f"a genuine report was not recorded ({status})")
