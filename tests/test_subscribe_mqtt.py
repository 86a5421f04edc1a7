"""Push through a real MQTT broker (Debian's mosquitto, started by the test on loopback):
`mirrorhook serve` publishers announce retained with QoS 1, port-less receivers follow the
topic (docs/design.md#the-broker). The broker is down for a publish and restarted with its
retained messages; the mirrors converge anyway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Mosquitto, mosquitto
from tests.helpers import (
    Processes,
    RsyncDaemon,
    announcements,
    free_port,
    key_pair,
    marker_of,
    needs,
    publish,
    receiver_toml,
    subscribing_receiver,
    trees_equal,
    wait_for_port,
    wait_until,
)
from tests.scene import json_toml

pytestmark = [pytest.mark.slow, needs("mosquitto", "mosquitto_sub", package="mosquitto")]


def publisher(
    folder: Path,
    root: Path,
    private: Path,
    broker: Mosquitto,
    mirrors: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    """A single-form publisher that announces through ``broker``, on its own event stream
    (at the returned config's ``listen``) and by webhook to ``mirrors`` (none by default)."""
    config = folder / "publisher.toml"
    settings = {
        "root": str(root),
        "state_dir": str(folder / "pstate"),
        "listen": [f"127.0.0.1:{free_port()}"],
        "signing_key_file": str(private),
        "name": "upstream",
    }
    text = json_toml(settings, mirrors or [])
    mqtt = {"url": broker.url, **extra}
    text += "[publisher.mqtt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in mqtt.items())
    config.write_text(text)
    return config


def retained(broker: Mosquitto, topic: str) -> dict[str, Any]:
    """The retained message of ``topic``, as a fresh subscriber gets it."""
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(broker.port), "-h", "127.0.0.1", "-t", topic, "-C", "1"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    envelope: dict[str, Any] = json.loads(out)
    return envelope


def current_of(envelope: dict[str, Any]) -> str:
    value: str = json.loads(envelope["body"])["data"]["current"]
    return value


def test_mirrors_follow_a_broker_through_its_outage_and_a_late_one_gets_the_retained_one(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    private, public = key_pair(tmp_path / "keys", "upstream")
    hook_port = free_port()
    (tmp_path / "hook").mkdir()
    hooked = receiver_toml(
        tmp_path / "hook",
        upstream=daemon.url,
        port=hook_port,
        secret_file=None,
        public_key_file=str(public),
    )
    processes.serve(hooked, "hook")
    wait_for_port(hook_port)
    webhook = {"name": "hook", "url": f"http://127.0.0.1:{hook_port}/v1/hook"}
    with mosquitto(tmp_path / "broker") as broker:
        config = publisher(tmp_path, daemon.root, private, broker, [webhook])
        listen = int(config.read_text().split("127.0.0.1:")[1].split('"')[0])
        publisher_process = processes.serve(config, "publisher")
        wait_for_port(listen)
        topic = f"{broker.url}/mirrorhook/upstream/upstream"
        follower = subscribing_receiver(tmp_path / "mqtt", daemon.url, public, [topic])
        events = f"http://127.0.0.1:{listen}/v1/events"
        streamer = subscribing_receiver(tmp_path / "sse", daemon.url, public, [events])
        processes.serve(follower, "mqtt")
        processes.serve(streamer, "sse")
        mqtt_tree, sse_tree = tmp_path / "mqtt" / "mirror", tmp_path / "sse" / "mirror"
        wait_until(lambda: marker_of(mqtt_tree) == marker_of(sse_tree) == "1", what="started")
        wait_until(lambda: "subscribed to" in processes.log("mqtt"), what="subscribed")
        wait_until(lambda: current_of(retained(broker, "mirrorhook/upstream/upstream")) == "1")

        publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
        wait_until(lambda: marker_of(mqtt_tree) == "2", what="the MQTT mirror synced")
        # Polling is off and no webhook reaches it: the retained "1" and then "2" came.
        wait_until(lambda: announcements(follower) >= 2, what="marker 2's announcement")
        assert trees_equal(daemon.root, mqtt_tree)

        broker.stop()  # a publish while the broker is down: webhooks and the stream go on
        publish(daemon.root, "3", {"dir0/newer.rpm": "newer\n"})
        wait_until(lambda: marker_of(sse_tree) == "3", what="the event-stream mirror synced")
        wait_until(lambda: marker_of(tmp_path / "hook" / "mirror") == "3", what="the webhook")
        assert marker_of(mqtt_tree) == "2"
        broker.start()  # the publisher reconnects and publishes the newest announcement
        wait_until(lambda: marker_of(mqtt_tree) == "3", what="caught up after the outage")
        wait_until(lambda: current_of(retained(broker, "mirrorhook/upstream/upstream")) == "3")

        broker.stop()  # a broker that lost its retained messages gets them again
        (broker.folder / "mosquitto.db").unlink()
        broker.start()
        wait_until(lambda: current_of(retained(broker, "mirrorhook/upstream/upstream")) == "3")

        publisher_process.terminate()  # the publisher goes; the broker keeps its copy
        publisher_process.wait(15)
        broker.stop()
        broker.start()
        late = subscribing_receiver(tmp_path / "late", daemon.url, public, [topic])
        processes.serve(late, "late")
        wait_until(lambda: marker_of(tmp_path / "late" / "mirror") == "3", what="synced")
        # Its start-up check may have synced it first (the retained one then finds it done,
        # or is covered by that sync): the subscription's count says it came.
        wait_until(lambda: announcements(late) >= 1, what="the retained message")


def test_a_poke_for_mqtt_exec_follows_each_announcement(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """poke_topic: a bare, unretained message naming the repository, as mqtt-exec users
    subscribe to on Alpine's and the FCIX mirrors' brokers."""
    private, _public = key_pair(tmp_path / "keys", "upstream")
    with mosquitto(tmp_path / "broker") as broker:
        config = publisher(
            tmp_path, daemon.root, private, broker, poke_topic="rsync/upstream.example.org/{repo}"
        )
        poked = subprocess.Popen(
            [
                *("mosquitto_sub", "-p", str(broker.port), "-h", "127.0.0.1"),
                *("-t", "rsync/upstream.example.org/#", "-C", "1", "-v"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            processes.serve(config, "publisher")
            # Its start-up announcement may come before the subscription is up: publish.
            wait_until(lambda: "connected to the MQTT broker" in processes.log("publisher"))
            publish(daemon.root, "2")
            out, _ = poked.communicate(timeout=15)
        finally:
            poked.kill()
            poked.wait()
    assert out == "rsync/upstream.example.org/upstream upstream\n"
