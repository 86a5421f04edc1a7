"""Tiers with no inbound port: an upstream announces through a real broker, a hub follows
its topic, syncs, and announces its own copy (signed with its own key) on its own topic,
which a leaf follows; and a host-form publisher's repositories each reach their own
port-less mirror (docs/design.md#subscriptions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.brokers import mosquitto
from tests.helpers import (
    Processes,
    RsyncDaemon,
    announcements,
    key_pair,
    make_upstream,
    marker_of,
    needs,
    publish,
    rsync_daemon,
    subscribing_receiver,
    trees_equal,
    wait_until,
)
from tests.scene import toml

pytestmark = [pytest.mark.slow, needs("mosquitto", package="mosquitto")]


def test_a_hub_cascades_a_publish_to_a_leaf_with_no_inbound_port_at_either_tier(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    upstream_key, upstream_pub = key_pair(tmp_path / "keys", "upstream")
    hub_key, hub_pub = key_pair(tmp_path / "keys", "hub")
    with mosquitto(tmp_path / "broker") as broker:
        upstream = tmp_path / "upstream.toml"
        upstream.write_text(
            toml(
                {
                    "publisher": {
                        "root": str(daemon.root),
                        "state_dir": str(tmp_path / "ustate"),
                        "signing_key_file": str(upstream_key),
                        "name": "upstream",
                    },
                    "publisher.mqtt": {"url": broker.url},
                }
            )
        )
        hub_tree = tmp_path / "hub" / "tree"
        hub_tree.mkdir(parents=True)  # as on a hub set up by hand: its publisher watches it
        hub = tmp_path / "hub.toml"
        hub.write_text(
            toml(
                {
                    "receiver": {
                        "state_dir": str(tmp_path / "hub" / "rstate"),
                        "upstream": daemon.url,
                        "target": str(hub_tree),
                        "public_key_file": str(upstream_pub),
                        "subscribe": [f"{broker.url}/mirrorhook/upstream/upstream"],
                        "poll_interval": 0,
                        "backoff": 0.2,
                    },
                    "publisher": {
                        "root": str(hub_tree),
                        "state_dir": str(tmp_path / "hub" / "pstate"),
                        "signing_key_file": str(hub_key),
                        "name": "hub",
                    },
                    "publisher.mqtt": {"url": broker.url},
                }
            )
        )
        leaf = subscribing_receiver(
            tmp_path / "leaf", f"{hub_tree}/", hub_pub, [f"{broker.url}/mirrorhook/hub/hub"]
        )
        processes.serve(upstream, "upstream")
        processes.serve(hub, "hub")
        wait_until(lambda: marker_of(hub_tree) == "1", what="the hub's start-up sync")
        processes.serve(leaf, "leaf")
        leaf_tree = tmp_path / "leaf" / "mirror"
        wait_until(lambda: marker_of(leaf_tree) == "1", what="the leaf's start-up sync")
        wait_until(lambda: "subscribed to" in processes.log("leaf"), what="the leaf subscribed")

        publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
        wait_until(lambda: marker_of(leaf_tree) == "2", what="the cascade to the leaf")
        assert trees_equal(daemon.root, leaf_tree)
        # Each came by its subscription: the retained "1" on connect, then "2".
        wait_until(lambda: announcements(hub) >= 2, what="the hub's announcement of 2")
        wait_until(lambda: announcements(leaf) >= 2, what="the leaf's announcement of 2")


def test_each_repository_of_a_host_form_publisher_reaches_its_own_port_less_mirror(
    tmp_path: Path, processes: Processes
) -> None:
    """Two repositories, two topics (mirrorhook/{publisher}/{repo}); a host-form receiver
    whose repositories inherit the key and subscribe each to its own."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    roots = {name: make_upstream(tmp_path / "up" / name) for name in ("ius", "epel")}
    with (
        mosquitto(tmp_path / "broker") as broker,
        rsync_daemon(tmp_path / "rsyncd", tmp_path / "up") as daemon,
    ):
        publisher = tmp_path / "publisher.toml"
        sections: dict[str, dict[str, Any]] = {
            "publisher": {
                "state_dir": str(tmp_path / "pstate"),
                "signing_key_file": str(private),
                "name": "upstream",
            },
            "publisher.mqtt": {"url": broker.url},
        }
        for name, root in roots.items():
            sections[f"publisher.repos.{name}"] = {"root": str(root)}
        publisher.write_text(toml(sections))
        receiver = tmp_path / "receiver.toml"
        mirror: dict[str, dict[str, Any]] = {
            "receiver": {
                "state_dir": str(tmp_path / "rstate"),
                "public_key_file": str(public),
                "poll_interval": 0,
                "backoff": 0.2,
            }
        }
        for name in roots:
            mirror[f"receiver.repos.{name}"] = {
                "upstream": f"{daemon.url}{name}/",
                "target": str(tmp_path / "mirror" / name),
                "subscribe": [f"{broker.url}/mirrorhook/upstream/{name}"],
            }
        receiver.write_text(toml(mirror))
        processes.serve(publisher, "publisher")
        processes.serve(receiver, "receiver")
        trees = {name: tmp_path / "mirror" / name for name in roots}
        wait_until(lambda: all(marker_of(tree) == "1" for tree in trees.values()), what="start")
        wait_until(lambda: processes.log("receiver").count("subscribed to") == 2, what="up")
        publish(roots["epel"], "2", {"dir0/epel.rpm": "e\n"})
        wait_until(lambda: marker_of(trees["epel"]) == "2", what="epel pushed")
        assert marker_of(trees["ius"]) == "1"  # its topic said nothing new
        assert "epel: trigger (mqtt from upstream, marker '2')" in processes.log("receiver")
        publish(roots["ius"], "2", {"dir0/ius.rpm": "i\n"})
        wait_until(lambda: marker_of(trees["ius"]) == "2", what="ius pushed")
        assert trees_equal(roots["ius"], trees["ius"])
