"""A mirror ``serve`` pushed to by a publisher ``serve`` that keeps manifests, over a real
rsync daemon: the setup of the tests of changes and of the safety valve."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import (
    Processes,
    RsyncDaemon,
    counting_rsync,
    free_port,
    key_pair,
    marker_of,
    receiver_toml,
    wait_for_port,
    wait_until,
)
from tests.scene import json_toml
from tests.trees import snapshot


@dataclasses.dataclass(frozen=True)
class PushedMirror:
    """A mirror ``serve`` (its tree at marker 1) and a publisher ``serve`` that keeps
    manifests and pushes to it; every rsync the mirror runs is logged."""

    config: Path
    tree: Path
    rsync_log: Path
    process: subprocess.Popen[bytes]
    publisher_config: Path
    publisher: subprocess.Popen[bytes]


def pushed_mirror(
    tmp_path: Path,
    processes: Processes,
    daemon: RsyncDaemon,
    *,
    below: str = "",
    rsync: Path | None = None,
    publisher_keys: dict[str, Any] | None = None,
    **overrides: Any,
) -> PushedMirror:
    """``below``: the published tree is that folder of the daemon's module (``repo/el9``);
    ``rsync``: the mirror's rsync (by default one that logs to ``rsync_log`` and execs
    the real one); ``publisher_keys`` and ``overrides``: more of each config."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    log = tmp_path / "rsync.log"
    port, hook = free_port(), free_port()
    (tmp_path / "m").mkdir()
    mirror = receiver_toml(
        tmp_path / "m",
        upstream=daemon.url + (f"{below}/" if below else ""),
        port=hook,
        secret_file=None,
        public_key_file=str(public),
        rsync=str(rsync or counting_rsync(tmp_path, log)),
        **overrides,
    )
    running = processes.serve(mirror, "mirror")
    wait_for_port(hook)
    tree = tmp_path / "m" / "mirror"
    wait_until(lambda: marker_of(tree) == "1", what="the start-up sync")
    config = tmp_path / "publisher.toml"
    config.write_text(
        json_toml(
            {
                "root": str(daemon.root / below),
                "state_dir": str(tmp_path / "pstate"),
                "listen": [f"127.0.0.1:{port}"],
                "public_url": f"http://127.0.0.1:{port}",
                "signing_key_file": str(private),
                "name": "upstream",
                **(publisher_keys or {}),
            },
            [{"name": "m", "url": f"http://127.0.0.1:{hook}/v1/hook"}],
        )
    )
    publisher = processes.serve(config, "publisher")
    wait_until(lambda: "marker '1': announcing" in processes.log("publisher"), what="up")
    return PushedMirror(mirror, tree, log, running, config, publisher)


def assert_same_tree(upstream: Path, mirror: Path) -> None:
    """Paths, kinds, sizes, contents, mtimes, modes, symlink targets and hardlink groups
    alike. Left out: the marker's own metadata (mirrorhook's), and the mtimes of folders
    and symlinks: with --delay-updates rsync leaves a folder it staged files in, and a
    symlink it made, at the time of the transfer, in the full transfer as in this one
    (rsync 3.5.0; tests/test_delta.py compares the two transfers, those times included)."""
    ours, theirs = snapshot(bytes(upstream)), snapshot(bytes(mirror))
    for taken in (ours, theirs):
        taken.entries.pop(b"CURRENT")
        for path, facts in list(taken.entries.items()):
            if facts.kind in ("directory", "symlink"):
                taken.entries[path] = dataclasses.replace(facts, mtime_ns=0)
    assert theirs.entries == ours.entries
    assert theirs.links == ours.links
