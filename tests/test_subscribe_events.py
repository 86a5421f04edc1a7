"""Push with no inbound port, over the publisher's event stream: real `mirrorhook serve`
processes (a publisher that lists no mirrors, receivers that open no port) over a real
rsync daemon (docs/design.md#subscriptions)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import (
    Processes,
    RsyncDaemon,
    free_port,
    key_pair,
    marker_of,
    publish,
    subscribing_receiver,
    trees_equal,
    wait_for_port,
    wait_until,
)
from tests.scene import json_toml

pytestmark = pytest.mark.slow


def upstream(folder: Path, daemon: RsyncDaemon, private: Path) -> tuple[Path, int]:
    """A publisher with a signing key and no [[mirrors]]; its listen port."""
    port = free_port()
    config = folder / "publisher.toml"
    config.write_text(
        json_toml(
            {
                "root": str(daemon.root),
                "state_dir": str(folder / "pstate"),
                "listen": [f"127.0.0.1:{port}"],
                "signing_key_file": str(private),
                "name": "upstream",
            },
            [],
        )
    )
    return config, port


def test_mirrors_without_a_port_sync_seconds_after_a_publish_and_a_late_one_from_the_last_value(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """Two receivers subscribe before the publish and converge on it by the stream alone;
    a third, started after the publish, converges from the last value it gets on connect."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    config, port = upstream(tmp_path, daemon, private)
    processes.serve(config, "publisher")
    wait_for_port(port)
    events = f"http://127.0.0.1:{port}/v1/events"
    early = [
        subscribing_receiver(tmp_path / name, daemon.url, public, [events]) for name in ("a", "b")
    ]
    for path in early:
        processes.serve(path, path.parent.name)
    trees = [path.parent / "mirror" for path in early]
    logs = [path.parent.name for path in early]
    wait_until(lambda: all(marker_of(tree) == "1" for tree in trees), what="start-up syncs")
    wait_until(lambda: all("subscribed to" in processes.log(log) for log in logs), what="up")
    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: all(marker_of(tree) == "2" for tree in trees), what="pushed")
    for path in early:
        assert trees_equal(daemon.root, path.parent / "mirror")
        assert "trigger (events from upstream, marker '2')" in processes.log(path.parent.name)
    late = subscribing_receiver(tmp_path / "late", daemon.url, public, [events])
    publish(daemon.root, "3", {"dir0/newer.rpm": "newer\n"})
    processes.serve(late, "late")
    wait_until(lambda: marker_of(tmp_path / "late" / "mirror") == "3", what="the late one")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/events?repo=upstream") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline() == b"event: announcement\n"
        assert stream.readline().startswith(b"id: msg_")
        data = json.loads(stream.readline().removeprefix(b"data: "))
    assert json.loads(data["body"])["data"]["current"] == "3"
    assert data["signature"].startswith("v1a,")
