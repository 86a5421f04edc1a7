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
    marker_of,
    publish,
    tree_invocations,
    trees_equal,
    wait_for_port,
    wait_until,
)
from tests.tiers import three_tiers

pytestmark = pytest.mark.slow


def test_a_publish_crosses_a_hub_by_its_change_and_a_refused_one_stops_there(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    tiers = three_tiers(tmp_path, daemon)
    hub_tree, leaf_tree, leaf_log = tiers.hub_tree, tiers.leaf_tree, tiers.leaf_log
    processes.serve(tiers.upstream, "upstream")
    processes.serve(tiers.hub, "hub")
    wait_until(lambda: marker_of(hub_tree) == "1", what="the hub's start-up sync")
    processes.serve(tiers.leaf, "leaf")
    wait_for_port(tiers.leaf_hook)
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
