"""A change a mirror fetches from its publisher (docs/design.md#changes-a-mirror-fetches):
taken only when signed by the upstream's key, about the repository its URL names, safe,
within ``max_changes``, and leading from the mirror's marker to the upstream's; anything
else means the whole tree, with the reason logged.

The publisher here is a real aiohttp server on a free loopback port that answers what
each test sets: a stand-in, since the real one (tests/test_changes_served.py) cannot be
made to sign another repository's change or a path with ``..`` on demand. The syncs run
real rsync against a real rsync daemon."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from mirrorhook import receiver_state, signing
from mirrorhook.change_choice import change_for
from mirrorhook.changes import Change, diff
from mirrorhook.keys import SigningKey
from mirrorhook.manifest import Kind, walk
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import POLL
from tests.helpers import (
    RsyncDaemon,
    counting_rsync,
    free_port,
    key_pair,
    publish,
    receiver_config,
    tree_invocations,
    trees_equal,
)


@dataclass
class Publisher:
    """Answers ``GET /v1/changes/NAME`` with ``body`` signed by ``key`` (or as set)."""

    key: SigningKey
    port: int
    public: Path
    """The upstream's public key file, which mirrors trust."""
    body: bytes = b""
    status: int = 200
    timestamp_offset: int = 0
    signed: bool = True
    asked: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/changes/upstream"

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append(request.path_qs)
        if self.status in (301, 302):
            raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
        headers = {}
        if self.signed:
            now = int(time.time()) + self.timestamp_offset
            headers = signing.signed_headers(self.key, "chg_test", now, self.body)
        return web.Response(status=self.status, body=self.body, headers=headers)


@pytest.fixture
async def publisher(tmp_path: Path) -> AsyncIterator[Publisher]:
    private, public = key_pair(tmp_path / "keys", "upstream")
    serving = Publisher(SigningKey.parse(private.read_text()), free_port(), public)
    app = web.Application()
    app.router.add_get("/v1/changes/{name}", serving.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", serving.port).start()
    yield serving
    await runner.cleanup()


def mirror_config(
    tmp_path: Path, daemon: RsyncDaemon, public: Path, **overrides: object
) -> ReceiverConfig:
    config = receiver_config(
        tmp_path, upstream=daemon.url, public_key_file=str(public), **overrides
    ).receiver
    assert config is not None
    return config


def document(change: Change, **fields: object) -> bytes:
    """``change`` on the wire, with ``fields`` set over its own."""
    encoded = json.loads(change.encode())
    encoded.update(fields)
    return json.dumps(encoded).encode()


A_CHANGE = Change("1", "2", ((b"dir0/new.rpm", Kind.FILE),), (), repo="upstream")


async def test_a_signed_change_that_leads_from_the_mirror_to_the_upstream_is_taken(
    tmp_path: Path, daemon: RsyncDaemon, publisher: Publisher
) -> None:
    config = mirror_config(tmp_path, daemon, publisher.public)
    publisher.body = A_CHANGE.encode()
    taken = await change_for(config, None, local="1", upstream="2", url=publisher.url)
    assert taken == A_CHANGE
    assert publisher.asked == ["/v1/changes/upstream?from=1"]
    # The announcement's own change, when it fits, needs no request.
    offered = Change("1", "2", (), ())
    assert await change_for(config, offered, local="1", upstream="2", url=publisher.url) is offered
    assert len(publisher.asked) == 1
    # A change that does not fit is not the end: the publisher is asked.
    assert await change_for(config, offered, local="0", upstream="2", url=publisher.url) is None
    assert publisher.asked[-1] == "/v1/changes/upstream?from=0"


HOSTILE = {
    "signed-by-another-key": ({"key": SigningKey.generate()}, "signature does not verify"),
    "unsigned": ({"signed": False}, "signature does not verify"),
    "signed-ten-minutes-ago": ({"timestamp_offset": -600}, "signature does not verify"),
    "another-repository": ({"body": document(A_CHANGE, repo="epel")}, "repository 'epel'"),
    "no-repository": ({"body": document(A_CHANGE, repo=None)}, "repository None"),
    "a-dot-dot-path": (
        {"body": document(A_CHANGE, changed=[["dir0/../../etc/x", "file"]])},
        "is not used",
    ),
    "an-absolute-path": ({"body": document(A_CHANGE, removed=["/etc/passwd"])}, "is not used"),
    "more-than-max-changes": (
        {
            "body": document(
                A_CHANGE, count=3, changed=[["a", "file"], ["b", "file"], ["c", "file"]]
            )
        },
        "more than max_changes 2",
    ),
    "longer-than-its-limit": ({"body": b" " * (1 << 20) + A_CHANGE.encode()}, "longer than"),
    "not-json": ({"body": b"<html>hi</html>"}, "not JSON"),
    "an-http-error": ({"status": 500}, "HTTP 500"),
    "a-redirect": ({"status": 302}, "HTTP 302"),
    "from-another-marker": ({"body": document(A_CHANGE, **{"from": "0"})}, "leads from '0' to '2'"),
    "to-another-marker": ({"body": document(A_CHANGE, to="3")}, "leads from '1' to '3'"),
    "unknown-to-the-publisher": ({"status": 404}, "keeps no manifest of marker '1'"),
}


@pytest.mark.parametrize("case", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_fetched_change_that_does_not_pass_means_the_whole_tree(
    tmp_path: Path,
    daemon: RsyncDaemon,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
    case: tuple[dict[str, object], str],
) -> None:
    settings, reason = case
    config = mirror_config(tmp_path, daemon, publisher.public, max_changes=2)
    publisher.body = A_CHANGE.encode()
    for name, value in settings.items():
        setattr(publisher, name, value)
    with caplog.at_level(logging.INFO, logger="mirrorhook"):
        taken = await change_for(config, None, local="1", upstream="2", url=publisher.url)
    assert taken is None
    assert reason in caplog.text
    assert "the whole tree" in caplog.text


async def test_no_request_without_a_url_a_local_marker_or_the_upstreams_public_key(
    tmp_path: Path, daemon: RsyncDaemon, publisher: Publisher
) -> None:
    publisher.body = A_CHANGE.encode()
    (tmp_path / "keyed").mkdir()
    (tmp_path / "secret").mkdir()
    keyed = mirror_config(tmp_path / "keyed", daemon, publisher.public)
    assert await change_for(keyed, None, local="1", upstream="2", url=None) is None
    assert await change_for(keyed, None, local=None, upstream="2", url=publisher.url) is None
    secret_only = receiver_config(tmp_path / "secret", upstream=daemon.url).receiver
    assert secret_only is not None
    assert not secret_only.public_keys
    assert await change_for(secret_only, None, local="1", upstream="2", url=publisher.url) is None
    assert publisher.asked == []


async def test_a_mirror_several_publishes_behind_syncs_by_the_fetched_change(
    tmp_path: Path, daemon: RsyncDaemon, publisher: Publisher
) -> None:
    """Synced at 1, then two publishes missed: a poll's sync fetches the change from 1 to
    3 (the URL remembered from an announcement) and transfers only its paths."""
    log = tmp_path / "rsync.log"
    config = mirror_config(
        tmp_path, daemon, publisher.public, rsync=str(counting_rsync(tmp_path, log))
    )
    syncer = Syncer(config)
    await syncer.sync(if_changed=True, trigger=POLL)  # the first sync: the whole tree
    before = walk(daemon.root, marker="1")
    (daemon.root / "dir1" / "file1.rpm").unlink()
    publish(daemon.root, "2", {"dir0/two.rpm": "two\n"})
    publish(daemon.root, "3", {"dir0/three.rpm": "three\n"})
    change = diff(before, walk(daemon.root, marker="3"))
    publisher.body = dataclasses.replace(change, repo="upstream").encode()
    await receiver_state.remember_changes(config, publisher.url)
    whole_runs = len(tree_invocations(log))

    await syncer.sync(if_changed=True, trigger=POLL)
    assert syncer.local_marker() == "3"
    (run,) = tree_invocations(log)[whole_runs:]
    assert "--files-from=" in run
    assert publisher.asked == ["/v1/changes/upstream?from=1"]
    assert trees_equal(daemon.root, config.target)

    # A hostile answer at the next publish: the whole tree, and the mirror is right.
    publisher.body = document(A_CHANGE, **{"from": "3", "to": "4", "removed": ["../escape"]})
    publish(daemon.root, "4", {"dir0/four.rpm": "four\n"})
    await syncer.sync(if_changed=True, trigger=POLL)
    assert syncer.local_marker() == "4"
    assert "--files-from=" not in tree_invocations(log)[-1]
    assert trees_equal(daemon.root, config.target)
