"""v1a with every part real: publishers that sign with their Ed25519 key, receivers that
hold only its public key, a move from shared secrets without a flag day, and a hub that
re-signs for its leaves with its own key."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mirrorhook.freshness import AFTER_PUBLISH
from tests.helpers import (
    Processes,
    RsyncDaemon,
    StaticWeb,
    free_port,
    key_pair,
    marker_of,
    mirrorhook,
    publish,
    receiver_toml,
    rsync_daemon,
    trees_equal,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.scene import json_toml

pytestmark = pytest.mark.slow


def receiver(
    folder: Path, upstream: str, *, secret: bool, public_key: Path | None, **keys: Any
) -> tuple[Path, int]:
    """A receiver's config in ``folder`` (its tree in ``folder/mirror``): with its own
    ``receiver.secret`` or none, and/or the upstream's public key; its hook port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    path = receiver_toml(
        folder,
        upstream=upstream,
        port=port,
        secret_file=None if not secret else str(folder / "receiver.secret"),
        public_key_file=None if public_key is None else str(public_key),
        **keys,
    )
    return path, port


def test_a_v1a_publisher_and_public_key_receivers_wrong_keys_401_and_hints(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """The publisher signs v1a only; a receiver holding only the public key converges (and
    its unsigned report makes the publisher check it); one holding another key answers 401."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    _other_private, other_public = key_pair(tmp_path / "keys", "other")
    good, good_port = receiver(tmp_path / "good", daemon.url, secret=False, public_key=public)
    wrong, wrong_port = receiver(
        tmp_path / "wrong", daemon.url, secret=False, public_key=other_public
    )
    listen = free_port()
    with StaticWeb(tmp_path / "good" / "mirror") as web:
        config = tmp_path / "publisher.toml"
        config.write_text(
            json_toml(
                {
                    "root": str(daemon.root),
                    "state_dir": str(tmp_path / "pstate"),
                    "listen": [f"127.0.0.1:{listen}"],
                    "public_url": f"http://127.0.0.1:{listen}",
                    "signing_key_file": str(private),
                    "timeout": 2,
                },
                [
                    {
                        "name": "good",
                        "url": f"http://127.0.0.1:{good_port}/v1/hook",
                        "check_url": f"{web.url}/CURRENT",
                    },
                    {"name": "wrong", "url": f"http://127.0.0.1:{wrong_port}/v1/hook"},
                ],
            )
        )
        for name, port, path in (("good", good_port, good), ("wrong", wrong_port, wrong)):
            processes.serve(path, name)
            wait_for_port(port)
        processes.serve(config, "publisher")
        wait_for_port(listen)
        tree = tmp_path / "good" / "mirror"
        publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
        wait_until(lambda: marker_of(tree) == "2", what="the public-key receiver synced")
        assert trees_equal(daemon.root, tree)

        def seen() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/mirrors") as page:
                rows: dict[str, Any] = json.loads(page.read())["mirrors"][0]
            return rows

        wait_until(lambda: seen()["state"] == "fresh" and seen()["serving"] == "2", what="fresh")
        # The report was a hint (the mirror holds no secret to sign it): checked, not recorded.
        assert seen()["reported"] is None
        assert seen()["lag"] < AFTER_PUBLISH[0]  # checked before the first scheduled check

        def wrong_status() -> dict[str, Any]:
            status = json.loads(mirrorhook("status", "-c", config, "--json").stdout)
            mirrors: dict[str, Any] = status["publisher"]["mirrors"][1]
            return mirrors

        wait_until(lambda: wrong_status()["last_status"] == 401, what="401 from the wrong key")
        assert marker_of(tmp_path / "wrong" / "mirror") == "1"  # its start-up sync, no more
        assert "no valid v1a signature" in processes.log("wrong")


def test_both_signatures_during_a_move_from_secrets_to_one_public_key(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """During the move the upstream signs v1 (for mirrors with a secret) and v1a: mirrors
    holding a secret, a public key, or both all take the same webhook."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    mirrors: dict[str, tuple[bool, Path | None]] = {
        "secret-only": (True, None),
        "both": (True, public),
        "key-only": (False, public),
    }
    entries = []
    for name, (secret, public_key) in mirrors.items():
        path, port = receiver(tmp_path / name, daemon.url, secret=secret, public_key=public_key)
        processes.serve(path, name)
        wait_for_port(port)
        entry = {"name": name, "url": f"http://127.0.0.1:{port}/v1/hook"}
        if secret:
            entry["secret_file"] = str(tmp_path / name / "receiver.secret")
        entries.append(entry)
    config = tmp_path / "publisher.toml"
    config.write_text(
        json_toml(
            {
                "root": str(daemon.root),
                "state_dir": str(tmp_path / "pstate"),
                "signing_key_file": str(private),
            },
            entries,
        )
    )
    processes.serve(config, "publisher")
    publish(daemon.root, "2", {"dir2/moved.rpm": "moved\n"})
    trees = {name: tmp_path / name / "mirror" for name in mirrors}
    wait_until(lambda: all(marker_of(tree) == "2" for tree in trees.values()), what="all three")
    for tree in trees.values():
        assert trees_equal(daemon.root, tree)
    check = mirrorhook("check-config", "-c", config)
    assert "secret-only: http" in check.stdout
    assert "(signed v1+v1a)" in check.stdout
    assert "key-only: http" in check.stdout
    assert "(signed v1a)" in check.stdout


def test_a_hub_re_signs_for_its_leaves_with_its_own_key(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """top (key A) → hub (verifies A; signs with its key B) → leaf (verifies B only)."""
    top_key, top_public = key_pair(tmp_path / "keys", "top")
    hub_key, hub_public = key_pair(tmp_path / "keys", "hub")
    hub_tree = tmp_path / "hub" / "tree"
    hub_tree.mkdir(parents=True)
    with rsync_daemon(tmp_path / "hub-daemon", hub_tree) as hub_daemon:
        leaf, leaf_port = receiver(
            tmp_path / "leaf", hub_daemon.url, secret=False, public_key=hub_public
        )
        hub_receiver, hub_port = receiver(
            tmp_path / "hub",
            daemon.url,
            secret=False,
            public_key=top_public,
            target=str(hub_tree),
        )
        hub = tmp_path / "hub" / "hub.toml"
        hub.write_text(
            hub_receiver.read_text()
            + json_toml(
                {
                    "root": str(hub_tree),
                    "state_dir": str(tmp_path / "hub" / "pstate"),
                    "signing_key_file": str(hub_key),
                },
                [{"name": "leaf", "url": f"http://127.0.0.1:{leaf_port}/v1/hook"}],
            )
        )
        top = tmp_path / "top.toml"
        top.write_text(
            json_toml(
                {
                    "root": str(daemon.root),
                    "state_dir": str(tmp_path / "top-state"),
                    "signing_key_file": str(top_key),
                },
                [{"name": "hub", "url": f"http://127.0.0.1:{hub_port}/v1/hook"}],
            )
        )
        processes.serve(leaf, "leaf")
        wait_for_port(leaf_port)
        processes.serve(hub, "hub")
        wait_for_port(hub_port)
        processes.serve(top, "top")
        trees = (hub_tree, tmp_path / "leaf" / "mirror")
        wait_until(lambda: all(marker_of(tree) == "1" for tree in trees), what="convergence")
        publish(daemon.root, "2", {"new/pkg-2.rpm": "added\n"})
        wait_until(lambda: all(marker_of(tree) == "2" for tree in trees), what="the cascade")
        for tree in trees:
            assert trees_equal(daemon.root, tree), tree
        assert "delivered marker '2' to leaf" in processes.log("hub")


def test_a_secret_still_protects_a_mirror_whose_upstream_has_no_key(tmp_path: Path) -> None:
    """The v1 path is unchanged: without signing_key_file a mirror entry needs its secret
    (checked here at the config level; every v1 network test runs it for real)."""
    write_secret(tmp_path / "m.secret")
    path = tmp_path / "p.toml"
    path.write_text(
        json_toml(
            {"root": str(tmp_path / "repo"), "state_dir": str(tmp_path / "state")},
            [{"name": "m", "url": "http://m.example/", "secret_file": str(tmp_path / "m.secret")}],
        )
    )
    check = mirrorhook("check-config", "-c", path)
    assert check.returncode == 0, check.stderr
    assert "(signed v1)" in check.stdout
