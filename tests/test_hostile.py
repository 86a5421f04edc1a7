"""Hostile input, property-based: random requests against the real receiver app, random
TOML documents against the config loader."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrorhook import message, signing
from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from mirrorhook.fleet import build_receiver
from mirrorhook.message import HOOK_PATH
from mirrorhook.receiver import Receiver, make_app
from mirrorhook.scheduler import Queued, Scheduled
from mirrorhook.trigger import Trigger
from tests.helpers import publish, receiver_config, secret_of

LOCAL = "local-marker"
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@dataclass
class Live:
    """A real receiver app on a real server, driven from synchronous hypothesis examples."""

    loop: asyncio.AbstractEventLoop
    client: TestClient[web.Request, web.Application]
    receiver: Receiver
    triggers: list[str]

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        async def send() -> int:
            async with self.client.post(HOOK_PATH, data=body, headers=headers) as response:
                await response.read()
                return response.status

        return self.loop.run_until_complete(send())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A receiver whose every trigger is recorded (its scheduler never runs a sync)."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    config = receiver_config(tmp_path, upstream=str(upstream)).receiver
    assert config is not None
    config.target.mkdir()
    publish(config.target, LOCAL)
    receiver = build_receiver(config)
    triggers: list[str] = []
    original = receiver.scheduler.trigger

    def spy(trigger: Trigger, *, delay: float | None = None) -> Scheduled | Queued:
        triggers.append(str(trigger))
        return original(trigger, delay=delay)

    receiver.scheduler.trigger = spy  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()

    async def start() -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(make_app(receiver))
        )
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    try:
        yield Live(loop, client, receiver, triggers)
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def sign(secret: signing.Secret, msg_id: str, stamp: int, body: bytes) -> dict[str, str]:
    headers = signing.signed_headers(secret, msg_id, stamp, body)
    headers["Content-Type"] = "application/json"
    return headers


LIVE_SETTINGS = settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@LIVE_SETTINGS
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type", "X-Other"]
        ),
        HEADER_TEXT,
    ),
    body=st.binary(max_size=300),
)
def test_random_requests_never_fail_and_never_schedule(
    live: Live, headers: dict[str, str], body: bytes
) -> None:
    """Arbitrary headers and bodies: never a 5xx, never a sync."""
    before = len(live.triggers)
    status = live.post(body, headers)
    assert status < 500
    assert status in (400, 401, 405, 408, 413, 415)
    assert len(live.triggers) == before


@LIVE_SETTINGS
@given(
    offset=st.integers(min_value=-900, max_value=900),
    current=st.text(max_size=30),
    marker_name=st.sampled_from(["CURRENT", "OTHER"]),
    right_secret=st.booleans(),
    replay=st.booleans(),
    garbage=st.binary(max_size=40),
    use_garbage=st.booleans(),
)
def test_only_valid_fresh_new_webhooks_schedule(  # noqa: PLR0917 - hypothesis passes each
    live: Live,
    offset: int,
    current: str,
    marker_name: str,
    right_secret: bool,
    replay: bool,
    garbage: bytes,
    use_garbage: bool,
) -> None:
    """Signed requests with random freshness, secrets, bodies and replays: a sync is
    asked for exactly when the request is validly signed, fresh, new, of the schema, for
    this mirror's marker, and announces a value other than the local one."""
    now = int(time.time())
    wrong = signing.Secret.parse(signing.new_secret())
    secret = secret_of(live.receiver.config) if right_secret else wrong
    body = garbage if use_garbage else message.new_update(marker_name, current, "x", now).encode()
    msg_id = f"id-{uuid.uuid4().hex}"
    headers = sign(secret, msg_id, now + offset, body)
    if replay:
        live.post(body, headers)
    before = len(live.triggers)
    status = live.post(body, headers)
    assert status < 500
    fresh = abs(offset) <= signing.TOLERANCE - 2  # margin for the seconds the test takes
    stale = abs(offset) > signing.TOLERANCE + 2
    valid_body = not use_garbage and marker_name == "CURRENT"
    should = right_secret and fresh and valid_body and not replay and current.strip() != LOCAL
    scheduled = len(live.triggers) > before
    if should:
        assert scheduled, status
        assert status == 202
    elif right_secret and fresh and valid_body and not replay:
        assert not scheduled
        assert status == 200  # the local marker already
    elif not (right_secret and not stale and valid_body) or replay:
        assert not scheduled, status
    if not right_secret or stale:
        assert status == 401


# --- the config loader ------------------------------------------------------------------------

KEYS = [
    "listen", "secret_file", "upstream", "target", "state_dir", "marker", "exclude_from",
    "rsync", "rsync_args", "max_delete", "backoff", "poll_interval", "poll_jitter",
    "retries", "timeout", "max_body", "root", "watch", "rescan", "concurrency", "retry_for",
    "mirrors", "name", "url", "bogus", "Listen",
]  # fmt: skip
SCALARS = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(
    st.sampled_from(["receiver", "publisher", "extra"]),
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8),
    max_size=3,
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENTS)
@pytest.mark.slow
def test_random_toml_never_crashes_the_loader_and_every_problem_names_its_key(
    tmp_path: Path, document: dict[str, dict[str, Any]]
) -> None:
    path = tmp_path / "random.toml"
    lines = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    try:
        load_config(path)
    except ConfigError as err:
        problems = err.problems
    else:
        return
    assert problems
    for problem in problems:
        assert problem.startswith(f"{path}: ")
        rest = problem.removeprefix(f"{path}: ")
        names_key = re.match(r"[A-Za-z_][\w.\[\]]*: ", rest)
        file_level = rest.startswith(("not valid TOML", "neither a [receiver]"))
        assert names_key or file_level, problem
