"""Three tiers as real processes, for the tests of hubs: an upstream publisher over a real
rsync daemon, a hub ``serve`` (receiver and publisher of one tree) and a leaf ``serve``
syncing from the hub's tree, webhooks signed v1a at both tiers; the leaf's rsync logs
every run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import RsyncDaemon, counting_rsync, free_port, key_pair
from tests.scene import toml


@dataclass(frozen=True)
class Tiers:
    """The three configs (``upstream.toml``, ``hub.toml``, ``leaf.toml``) and the trees."""

    upstream: Path
    hub: Path
    leaf: Path
    hub_tree: Path
    leaf_tree: Path
    leaf_hook: int
    leaf_log: Path


def three_tiers(
    tmp_path: Path,
    daemon: RsyncDaemon,
    *,
    hub_receiver: dict[str, Any] | None = None,
    hub_publisher: dict[str, Any] | None = None,
) -> Tiers:
    """Write the configs; the hub's tree is an empty folder. ``hub_receiver`` and
    ``hub_publisher``: more keys for the hub's two sections."""
    upstream_key, upstream_pub = key_pair(tmp_path / "keys", "upstream")
    hub_key, hub_pub = key_pair(tmp_path / "keys", "hub")
    up_port, hub_hook, hub_port, leaf_hook = (free_port() for _ in range(4))
    hub_tree, leaf_tree = tmp_path / "hub" / "tree", tmp_path / "leaf" / "tree"
    leaf_log = tmp_path / "leaf-rsync.log"

    def publisher(root: Path, state: Path, key: Path, port: int, name: str) -> dict[str, Any]:
        return {
            "root": str(root),
            "state_dir": str(state),
            "signing_key_file": str(key),
            "listen": [f"127.0.0.1:{port}"],
            "public_url": f"http://127.0.0.1:{port}",
            "name": name,
        }

    def receiver(hook: int, state: Path, upstream: str, target: Path, key: Path) -> dict[str, Any]:
        return {
            "listen": [f"127.0.0.1:{hook}"],
            "state_dir": str(state),
            "upstream": upstream,
            "target": str(target),
            "public_key_file": str(key),
            "poll_interval": 0,
            "backoff": 0.1,
        }

    upstream = tmp_path / "upstream.toml"
    upstream.write_text(
        toml(
            {
                "publisher": publisher(
                    daemon.root, tmp_path / "ustate", upstream_key, up_port, "upstream"
                ),
                "publisher.mirrors": [
                    {"name": "hub", "url": f"http://127.0.0.1:{hub_hook}/v1/hook"}
                ],
            }
        )
    )
    hub_tree.mkdir(parents=True)
    hub = tmp_path / "hub.toml"
    hub_state = tmp_path / "hub"
    hub.write_text(
        toml(
            {
                "receiver": receiver(
                    hub_hook, hub_state / "rstate", daemon.url, hub_tree, upstream_pub
                )
                | (hub_receiver or {}),
                "publisher": publisher(hub_tree, hub_state / "pstate", hub_key, hub_port, "hub")
                | (hub_publisher or {}),
                "publisher.mirrors": [
                    {"name": "leaf", "url": f"http://127.0.0.1:{leaf_hook}/v1/hook"}
                ],
            }
        )
    )
    leaf = tmp_path / "leaf.toml"
    leaf_receiver = receiver(
        leaf_hook, tmp_path / "leaf" / "state", f"{hub_tree}/", leaf_tree, hub_pub
    )
    leaf_receiver["rsync"] = str(counting_rsync(tmp_path, leaf_log))
    leaf.write_text(toml({"receiver": leaf_receiver}))
    return Tiers(upstream, hub, leaf, hub_tree, leaf_tree, leaf_hook, leaf_log)
