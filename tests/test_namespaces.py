"""Across hosts: upstream, hub and two leaves, each in its own network namespace.

The test builds its own small network (namespaces, veth pairs, a bridge in a "switch"
namespace, private addresses 10.77.N.0/24) and removes all of it afterwards, also on
failure. It needs root and iproute2; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import (
    make_upstream,
    needs,
    publish,
    publisher_toml,
    receiver_toml,
    stop_processes,
    trees_equal,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,  # real daemons and processes: see `make test-fast`
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    needs("ip", package="iproute2"),
]
HOSTS = ["up", "hub", "l1", "l2"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Network:
    """Namespaces named PREFIX-HOST on one bridge; HOST's address is 10.77.SUBNET.INDEX."""

    prefix: str
    subnet: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"10.77.{self.subnet}.{HOSTS.index(host) + 1}"

    def link(self, host: str, *, up: bool) -> None:
        """Plug or unplug HOST's cable at the switch."""
        ip("-n", self.ns("sw"), "link", "set", f"p-{host}", "up" if up else "down")

    def run(self, host: str, command: list[str], log: Path) -> None:
        with log.open("wb") as sink:
            self.processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", self.ns(host), *command],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(prefix=f"mh{os.getpid() % 100000}", subnet=os.getpid() % 250)
    names = [net.ns(host) for host in [*HOSTS, "sw"]]
    try:
        for name in names:
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", net.ns("sw"), "link", "add", "br0", "type", "bridge")
        ip("-n", net.ns("sw"), "link", "set", "br0", "up")
        for host in HOSTS:
            ip(
                "link",
                "add",
                f"{net.prefix}{host}",
                "type",
                "veth",
                "peer",
                "name",
                f"{net.prefix}s{host}",
            )
            ip("link", "set", f"{net.prefix}{host}", "netns", net.ns(host), "name", "eth0")
            ip("link", "set", f"{net.prefix}s{host}", "netns", net.ns("sw"), "name", f"p-{host}")
            ip("-n", net.ns("sw"), "link", "set", f"p-{host}", "master", "br0", "up")
            ip("-n", net.ns(host), "addr", "add", f"{net.address(host)}/24", "dev", "eth0")
            ip("-n", net.ns(host), "link", "set", "eth0", "up")
        yield net
    finally:
        stop_processes(net.processes)
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def rsyncd(net: Network, host: str, root: Path, folder: Path) -> str:
    """Serve ``root`` from HOST's address; return the rsync URL."""
    conf = folder / f"rsyncd-{host}.conf"
    conf.write_text(
        f"pid file = {folder}/rsyncd-{host}.pid\nuse chroot = no\nreverse lookup = no\n"
        f"uid = {os.getuid()}\ngid = {os.getgid()}\n[up]\npath = {root}\nread only = yes\n"
    )
    net.run(
        host,
        ["rsync", "--daemon", "--no-detach", f"--config={conf}", "--port=873",
         f"--address={net.address(host)}"],
        folder / f"rsyncd-{host}.log",
    )  # fmt: skip
    return f"rsync://{net.address(host)}/up/"


def marker(tree: Path) -> str | None:
    path = tree / "CURRENT"
    return path.read_text().strip() if path.exists() else None


def test_chain_across_namespaces_survives_a_cut_link(tmp_path: Path, network: Network) -> None:
    """upstream → hub → two leaves on four hosts; a leaf's link is cut during a publish and
    restored: the other leaf converges at once, the cut one by redelivery or poll."""
    net = network
    mirrorhook = [sys.executable, "-m", "mirrorhook", "serve", "-c"]
    upstream = make_upstream(tmp_path / "upstream", marker="1")
    hub_dir = tmp_path / "hub"
    hub_tree = hub_dir / "tree"
    hub_tree.mkdir(parents=True)
    up_url = rsyncd(net, "up", upstream, tmp_path)
    hub_url = rsyncd(net, "hub", hub_tree, tmp_path)
    leaves = {name: tmp_path / name for name in ("l1", "l2")}
    for name, folder in leaves.items():
        folder.mkdir()
        receiver_toml(
            folder, upstream=hub_url, listen=[f"{net.address(name)}:8873"], poll_interval=3
        )
    hub_receiver = receiver_toml(
        hub_dir, upstream=up_url, listen=[f"{net.address('hub')}:8873"], target=str(hub_tree)
    )
    hub_publisher = publisher_toml(
        hub_dir,
        root=hub_tree,
        mirrors=[(name, f"http://{net.address(name)}:8873/v1/hook") for name in leaves],
        timeout=2,
    )
    for name, folder in leaves.items():
        (folder / "receiver.secret").write_text(
            (hub_dir / "secrets" / f"{name}.secret").read_text()
        )
    (hub_dir / "hub.toml").write_text(hub_receiver.read_text() + "\n" + hub_publisher.read_text())
    top = tmp_path / "top"
    top.mkdir()
    top_config = publisher_toml(
        top, root=upstream, mirrors=[("hub", f"http://{net.address('hub')}:8873/v1/hook")]
    )
    (hub_dir / "receiver.secret").write_text((top / "secrets" / "hub.secret").read_text())
    for name, folder in leaves.items():
        net.run(name, [*mirrorhook, str(folder / "mirrorhook.toml")], folder / "serve.log")
    net.run("hub", [*mirrorhook, str(hub_dir / "hub.toml")], hub_dir / "serve.log")
    net.run("up", [*mirrorhook, str(top_config)], top / "serve.log")
    trees = {"hub": hub_tree, **{name: folder / "mirror" for name, folder in leaves.items()}}
    wait_until(lambda: all(marker(tree) == "1" for tree in trees.values()), "first convergence")

    net.link("l1", up=False)
    (upstream / "dir0" / "file0.rpm").unlink()
    publish(upstream, "2", {"dir1/file1.rpm": "changed\n", "new/pkg.rpm": "added\n"})
    wait_until(lambda: marker(hub_tree) == "2" and marker(trees["l2"]) == "2", "hub and l2")
    time.sleep(1)
    assert marker(trees["l1"]) == "1", "l1 is cut off"
    net.link("l1", up=True)
    wait_until(lambda: marker(trees["l1"]) == "2", "l1 after its link came back")
    for tree in trees.values():
        assert trees_equal(upstream, tree), tree
