"""Whole networks of real ``mirrorhook serve`` processes on loopback: publishers, hubs, leaves."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    Processes,
    free_port,
    make_upstream,
    marker_of,
    mirror_secret,
    publish,
    publisher_toml,
    receiver_toml,
    rsync_daemon,
    trees_equal,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.mirrors import HookMirror, always, mirror_in_thread

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`


def test_publisher_killed_while_a_mirror_is_down_delivers_the_newest_on_restart(
    tmp_path: Path, processes: Processes
) -> None:
    """SIGKILL the publisher while a mirror is down, publish again, bring the mirror up,
    restart the publisher: the mirror receives the newest marker only, and a second restart
    sends nothing until the next publish."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, "1")
    port = free_port()
    config = publisher_toml(
        tmp_path, root=root, mirrors=[("late", f"http://127.0.0.1:{port}/v1/hook")]
    )
    first = processes.serve(config, "publisher")
    state = tmp_path / "publisher-state" / "publisher.json"

    def recorded(field: str) -> object:
        try:
            return json.loads(state.read_text())["mirrors"]["late"].get(field)
        except (OSError, ValueError, KeyError):
            return None

    wait_until(lambda: recorded("pending") == "1", what="a failed delivery recorded")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    publish(root, "2")
    mirror = HookMirror(mirror_secret(tmp_path, "late"), always(202))
    with mirror_in_thread(mirror, port):
        second = processes.serve(config, "publisher")
        # Recorded as delivered, the mirror's only worker waits for a newer marker: this
        # process sends nothing more.
        wait_until(lambda: recorded("delivered") == "2", what="the delivery recorded")
        assert mirror.values() == ["2"]
        # Once acknowledged, a restart sends nothing: the record is what decides.
        second.terminate()
        assert second.wait(15) == 0
        processes.serve(config, "publisher")
        wait_until(lambda: "announcing to 0 of 1 mirror" in processes.log("publisher"))
        # The next publish is the witness: a mirror gets one delivery at a time, in order,
        # so anything the restart sent arrives before it.
        publish(root, "3")
        wait_until(lambda: recorded("delivered") == "3", what="the next publish delivered")
    assert mirror.values() == ["2", "3"]
    assert len(mirror.received) == 2


def test_three_tier_chain_converges(tmp_path: Path, processes: Processes) -> None:
    """upstream → hub → two leaves, each its own process, each tree served by a real rsync
    daemon: after a publish (changes, additions, deletions) every tree equals the upstream."""
    upstream = make_upstream(tmp_path / "upstream", marker="1")
    hub_tree = tmp_path / "hub" / "tree"
    hub_tree.mkdir(parents=True)
    leaves = {name: tmp_path / name for name in ("leaf1", "leaf2")}
    for folder in leaves.values():
        folder.mkdir()
    with (
        rsync_daemon(tmp_path, upstream) as upstream_daemon,
        rsync_daemon(tmp_path / "hub", hub_tree) as hub_daemon,
    ):
        leaf_ports = {}
        for name, folder in leaves.items():
            leaf_ports[name] = free_port()
            receiver_toml(folder, upstream=hub_daemon.url, port=leaf_ports[name], poll_interval=0)
        hub_port = free_port()
        hub = tmp_path / "hub"
        # the hub's receiver secret and its publisher's secrets for the leaves
        hub_receiver = receiver_toml(
            hub, upstream=upstream_daemon.url, port=hub_port, poll_interval=0, target=str(hub_tree)
        )
        hub_publisher = publisher_toml(
            hub,
            root=hub_tree,
            mirrors=[(name, f"http://127.0.0.1:{leaf_ports[name]}/v1/hook") for name in leaves],
        )
        for name, folder in leaves.items():
            (folder / "receiver.secret").write_text(
                (hub / "secrets" / f"{name}.secret").read_text()
            )
        hub_config = hub / "hub.toml"
        hub_config.write_text(hub_receiver.read_text() + "\n" + hub_publisher.read_text())
        top = tmp_path / "top"
        top.mkdir()
        top_config = publisher_toml(
            top, root=upstream, mirrors=[("hub", f"http://127.0.0.1:{hub_port}/v1/hook")]
        )
        write_secret(hub / "receiver.secret", (top / "secrets" / "hub.secret").read_text().strip())
        for name, folder in leaves.items():
            processes.serve(folder / "mirrorhook.toml", name)
            wait_for_port(leaf_ports[name])
        processes.serve(hub_config, "hub")
        wait_for_port(hub_port)
        processes.serve(top_config, "top")
        trees = [hub_tree, *(folder / "mirror" for folder in leaves.values())]
        wait_until(lambda: all(marker_of(tree) == "1" for tree in trees), what="first convergence")

        (upstream / "dir0" / "file0.rpm").unlink()
        publish(upstream, "2", {"dir1/file1.rpm": "changed\n", "new/pkg-2.rpm": "added\n"})
        wait_until(lambda: all(marker_of(tree) == "2" for tree in trees), what="convergence")
        for tree in trees:
            assert trees_equal(upstream, tree), tree
        assert "delivered marker '2' to hub" in processes.log("top")
        assert "delivered marker '2' to leaf1" in processes.log("hub")
