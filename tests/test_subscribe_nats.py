"""The distributed engine: the MQTT path through a three-node cluster of Debian's
nats-server (JetStream and its MQTT listener on, all on loopback), the publisher connected
to one node and the mirrors to the two others (docs/design.md#the-broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.brokers import nats_cluster
from tests.helpers import (
    Processes,
    RsyncDaemon,
    announcements,
    key_pair,
    marker_of,
    needs,
    publish,
    subscribing_receiver,
    trees_equal,
    wait_until,
)
from tests.scene import json_toml

pytestmark = [pytest.mark.slow, needs("nats-server", package="nats-server")]


def test_a_publish_crosses_a_three_node_nats_cluster_to_mirrors_on_the_other_nodes(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    private, public = key_pair(tmp_path / "keys", "upstream")
    with nats_cluster(tmp_path / "nats") as nodes:
        config = tmp_path / "publisher.toml"
        settings = {
            "root": str(daemon.root),
            "state_dir": str(tmp_path / "pstate"),
            "signing_key_file": str(private),
            "name": "upstream",
        }
        config.write_text(
            json_toml(settings, []) + f"[publisher.mqtt]\nurl = {json.dumps(nodes[0].url)}\n"
        )
        mirrors = [
            subscribing_receiver(
                tmp_path / f"mirror{index}",
                daemon.url,
                public,
                [f"{node.url}/mirrorhook/upstream/upstream"],
            )
            for index, node in enumerate(nodes[1:], start=1)
        ]
        processes.serve(config, "publisher")
        wait_until(
            lambda: "connected to the MQTT broker" in processes.log("publisher"),
            what="the publisher connected",
            timeout=60,
        )
        for path in mirrors:
            processes.serve(path, path.parent.name)
        trees = [path.parent / "mirror" for path in mirrors]
        wait_until(lambda: all(marker_of(tree) == "1" for tree in trees), what="start-up syncs")
        # The retained announcement of marker 1 came through the cluster too.
        names = [path.parent.name for path in mirrors]
        heard = "mqtt msg_"
        wait_until(lambda: all(heard in processes.log(name) for name in names), timeout=60)
        publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
        wait_until(lambda: all(marker_of(tree) == "2" for tree in trees), what="pushed", timeout=60)
        assert all(trees_equal(daemon.root, tree) for tree in trees)
        # Polling is off: each came by its subscription (the retained "1", then "2").
        wait_until(lambda: all(announcements(path) >= 2 for path in mirrors), what="announced")
