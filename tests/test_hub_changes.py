"""A hub passes the change on (docs/design.md#a-hub-passes-the-change-on): its publisher
makes its manifest from the change its receiver applied (no walk of its tree) and serves
the change to its own mirrors, so a publish crosses two tiers at the cost of the change;
and a change the hub's safety valve refused goes no further. Real processes: an upstream
publisher over a real rsync daemon, a hub `serve` (receiver and publisher of one tree), a
leaf `serve` syncing from the hub's tree; webhooks signed v1a at both tiers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import (
    Processes,
    RsyncDaemon,
    counting_rsync,
    free_port,
    key_pair,
    marker_of,
    publish,
    tree_invocations,
    trees_equal,
    wait_for_port,
    wait_until,
)
from tests.scene import toml

pytestmark = pytest.mark.slow


def test_a_publish_crosses_a_hub_by_its_change_and_a_refused_one_stops_there(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    upstream_key, upstream_pub = key_pair(tmp_path / "keys", "upstream")
    hub_key, hub_pub = key_pair(tmp_path / "keys", "hub")
    up_port, hub_hook, hub_port, leaf_hook = (free_port() for _ in range(4))
    hub_tree, leaf_tree = tmp_path / "hub" / "tree", tmp_path / "leaf" / "tree"
    leaf_log = tmp_path / "leaf-rsync.log"
    (tmp_path / "upstream.toml").write_text(
        toml(
            {
                "publisher": {
                    "root": str(daemon.root),
                    "state_dir": str(tmp_path / "ustate"),
                    "signing_key_file": str(upstream_key),
                    "listen": [f"127.0.0.1:{up_port}"],
                    "public_url": f"http://127.0.0.1:{up_port}",
                    "name": "upstream",
                },
                "publisher.mirrors": [
                    {"name": "hub", "url": f"http://127.0.0.1:{hub_hook}/v1/hook"}
                ],
            }
        )
    )
    hub_tree.mkdir(parents=True)
    (tmp_path / "hub.toml").write_text(
        toml(
            {
                "receiver": {
                    "listen": [f"127.0.0.1:{hub_hook}"],
                    "state_dir": str(tmp_path / "hub" / "rstate"),
                    "upstream": daemon.url,
                    "target": str(hub_tree),
                    "public_key_file": str(upstream_pub),
                    "poll_interval": 0,
                    "backoff": 0.1,
                },
                "publisher": {
                    "root": str(hub_tree),
                    "state_dir": str(tmp_path / "hub" / "pstate"),
                    "signing_key_file": str(hub_key),
                    "listen": [f"127.0.0.1:{hub_port}"],
                    "public_url": f"http://127.0.0.1:{hub_port}",
                    "name": "hub",
                },
                "publisher.mirrors": [
                    {"name": "leaf", "url": f"http://127.0.0.1:{leaf_hook}/v1/hook"}
                ],
            }
        )
    )
    (tmp_path / "leaf.toml").write_text(
        toml(
            {
                "receiver": {
                    "listen": [f"127.0.0.1:{leaf_hook}"],
                    "state_dir": str(tmp_path / "leaf" / "state"),
                    "upstream": f"{hub_tree}/",
                    "target": str(leaf_tree),
                    "public_key_file": str(hub_pub),
                    "poll_interval": 0,
                    "backoff": 0.1,
                    "rsync": str(counting_rsync(tmp_path, leaf_log)),
                }
            }
        )
    )
    processes.serve(tmp_path / "upstream.toml", "upstream")
    processes.serve(tmp_path / "hub.toml", "hub")
    wait_until(lambda: marker_of(hub_tree) == "1", what="the hub's start-up sync")
    processes.serve(tmp_path / "leaf.toml", "leaf")
    wait_for_port(leaf_hook)
    wait_until(lambda: marker_of(leaf_tree) == "1", what="the leaf's start-up sync")
    wait_until(lambda: "marker '1': announcing" in processes.log("hub"), what="the hub's")

    (daemon.root / "dir1" / "file1.rpm").unlink()
    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(leaf_tree) == "2", what="the cascade")
    hub_log = processes.log("hub")
    assert "stage 1 by change" in hub_log
    assert "the manifest of marker '2' from the change the hub applied" in hub_log
    assert "--files-from=" in tree_invocations(leaf_log)[-1]
    assert trees_equal(daemon.root, leaf_tree)

    shutil.rmtree(daemon.root / "dir2")  # half the tree: the hub's valve holds it
    shutil.rmtree(daemon.root / "dir3")
    publish(daemon.root, "3")
    wait_until(lambda: "more than max_delete_fraction" in processes.log("hub"), what="refused")
    assert marker_of(hub_tree) == "2"
    assert marker_of(leaf_tree) == "2"
    assert (leaf_tree / "dir2").is_dir()
    assert "marker '3': announcing" not in processes.log("hub")
