"""Push with no inbound port, over the publisher's event stream: real `mirrorhook serve`
processes (a publisher that lists no mirrors, receivers that open no port) over a real
rsync daemon (docs/design.md#subscriptions)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    Processes,
    RsyncDaemon,
    announcements,
    free_port,
    key_pair,
    marker_of,
    mirrorhook,
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
    assert all(trees_equal(daemon.root, tree) for tree in trees)
    # The stream brought both announcements (the last value on connect, then marker 2's).
    wait_until(lambda: all(announcements(path) >= 2 for path in early), what="announced")
    late = subscribing_receiver(tmp_path / "late", daemon.url, public, [events])
    publish(daemon.root, "3", {"dir0/newer.rpm": "newer\n"})
    processes.serve(late, "late")
    wait_until(lambda: marker_of(tmp_path / "late" / "mirror") == "3", what="the late one")
    # Its start-up check may have synced it first (the last value then finds it done, or is
    # covered by that sync): the subscription's count says it came.
    wait_until(lambda: announcements(late) >= 1, what="the last value")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/events?repo=upstream") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline() == b"event: announcement\n"
        assert stream.readline().startswith(b"id: msg_")
        data = json.loads(stream.readline().removeprefix(b"data: "))
    assert json.loads(data["body"])["data"]["current"] == "3"
    assert data["signature"].startswith("v1a,")


def get(url: str) -> str:
    with urllib.request.urlopen(url) as answer:
        text: str = answer.read().decode()
    return text


def test_status_and_metrics_show_each_subscription_and_it_outlives_a_publisher_restart(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """A mirror that subscribes and also listens (for its metrics): status and /metrics say
    it is connected, the publisher counts it; the publisher restarts and the mirror
    reconnects on its own, then converges on the next publish."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    config, port = upstream(tmp_path, daemon, private)
    publisher = processes.serve(config, "publisher")
    wait_for_port(port)
    events = f"http://127.0.0.1:{port}/v1/events"
    mirror_port = free_port()
    mirror = subscribing_receiver(tmp_path / "m", daemon.url, public, [events])
    mirror.write_text(f'{mirror.read_text()}listen = ["127.0.0.1:{mirror_port}"]\n')
    processes.serve(mirror, "m")
    wait_until(lambda: "subscribed to" in processes.log("m"), what="subscribed")

    def subscription() -> dict[str, Any]:
        entry: dict[str, Any] = status(mirror)["receiver"]["subscriptions"][0]
        return entry

    wait_until(lambda: subscription()["connected"], what="status says connected")
    assert subscription()["url"] == events
    assert subscription()["via"] == "events"
    text = mirrorhook("status", "-c", mirror).stdout
    assert f"  subscription: {events}: connected since " in text
    metrics = get(f"http://127.0.0.1:{mirror_port}/metrics")
    assert f'mirrorhook_subscription_connected{{url="{events}"}} 1.0' in metrics
    assert json.loads(get(f"http://127.0.0.1:{port}/v1/status"))["subscribers"] == {"upstream": 1}
    assert "mirrorhook_subscribers 1.0" in get(f"http://127.0.0.1:{port}/metrics")
    assert "; 1 mirror subscribed to its event stream." in get(f"http://127.0.0.1:{port}/")

    publisher.terminate()
    publisher.wait(15)
    wait_until(lambda: not subscription()["connected"], what="status says down")
    assert subscription()["last_error"]
    processes.serve(config, "publisher-again")
    wait_until(lambda: subscription()["connected"], what="reconnected on its own")
    assert subscription()["reconnects"] >= 1
    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(tmp_path / "m" / "mirror") == "2", what="synced after it")


def status(config: Path) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(mirrorhook("status", "-c", config, "--json").stdout)
    return shown
