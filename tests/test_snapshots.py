"""Snapshot mode (docs/design.md#snapshots): ``target`` a symlink switched at once to each
new tree, built with hard links to the current one; the one replaced kept for ``grace``;
a folder taken over; what a crash or a full disk leaves. Real rsync against a real
``rsync --daemon`` on 127.0.0.1, real ``mirrorhook sync`` and ``serve`` processes."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import signing
from tests.helpers import (
    MIRRORHOOK,
    Processes,
    RsyncDaemon,
    free_port,
    marker_of,
    mirrorhook,
    needs,
    publish,
    receiver_toml,
    signed_webhook,
    tree_invocations,
    trees_equal,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.tiers import three_tiers

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`


def snapshot_mirror(tmp_path: Path, daemon: RsyncDaemon, **overrides: Any) -> Path:
    """A ``[receiver]`` config in snapshot mode following the daemon's module."""
    keys = {"publish": "snapshot", "grace": 600, **overrides}
    return receiver_toml(tmp_path, upstream=daemon.url, **keys)


def sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = mirrorhook("sync", "--config", config, *args)
    assert done.returncode == 0, done.stderr
    return done


def in_mount_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell ``script`` in a mount namespace of its own (``unshare -m``: what it
    mounts, nothing else sees), with mirrorhook's command line as its ``"$@"``."""
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *MIRRORHOOK],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def folders(tmp_path: Path) -> list[str]:
    return sorted(entry.name for entry in (tmp_path / "mirror.snapshots").iterdir())


def link(path: Path) -> str:
    return str(path.readlink())


def test_each_sync_builds_a_snapshot_linked_to_the_last_and_switches_target(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    config = snapshot_mirror(tmp_path, daemon, trace="project/trace/mirror")
    mirror = tmp_path / "mirror"
    sync(config)
    assert mirror.is_symlink()
    first = link(mirror)
    assert first.startswith("mirror.snapshots/")
    assert marker_of(mirror) == "1"
    assert (mirror / "project/trace/mirror").is_file()
    kept = (mirror / "dir1/file1.rpm").stat()

    (upstream / "dir2/file2.rpm").unlink()
    publish(upstream, "2", {"dir0/file0.rpm": "rewritten, longer\n", "dir3/new.rpm": "new\n"})
    sync(config)
    second = link(mirror)
    assert second != first
    assert marker_of(mirror) == "2"
    assert link(tmp_path / "mirror.previous") == first
    # Unchanged files are the same inodes in both; changed and removed ones are not.
    assert (mirror / "dir1/file1.rpm").stat().st_ino == kept.st_ino
    assert (tmp_path / first / "dir1/file1.rpm").stat().st_nlink == 2
    assert (mirror / "dir0/file0.rpm").read_text() == "rewritten, longer\n"
    assert (tmp_path / first / "dir0/file0.rpm").read_text() == "package 0\n"
    assert not (mirror / "dir2/file2.rpm").exists()
    assert (tmp_path / "mirror.previous/dir2/file2.rpm").exists()
    assert marker_of(tmp_path / "mirror.previous") == "1"
    assert (tmp_path / first / "project/trace/mirror").is_file()  # each has its own trace

    sync(config, "--if-changed")  # up to date: a pass between syncs measures the disk
    status = json.loads(mirrorhook("status", "--json", "--config", config).stdout)["receiver"]
    shown = {entry["role"]: entry for entry in status["snapshots"]}
    assert shown["current"]["path"] == str(tmp_path / second)
    assert shown["previous"]["path"] == str(tmp_path / first)
    assert shown["previous"]["own_bytes"] > 0  # its old file0 and its file2
    text = mirrorhook("status", "--config", config).stdout
    assert f"{second.split('/')[1]} (current, built" in text
    assert f"{first.split('/')[1]} (previous, built" in text
    assert "kB of its own, removed after" in text


def test_replaced_snapshots_are_removed_after_their_grace(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    config = snapshot_mirror(tmp_path, daemon, grace=2)
    sync(config)
    publish(upstream, "2", {"dir0/a.rpm": "a\n"})
    sync(config)
    assert len(folders(tmp_path)) == 2
    sync(config, "--if-changed")  # within grace: nothing to do, nothing removed
    assert len(folders(tmp_path)) == 2
    time.sleep(2.2)
    sync(config, "--if-changed")  # the next run retires what expired: it is the spare now
    assert folders(tmp_path) == sorted([link(tmp_path / "mirror").split("/")[1], "spare"])
    assert not os.path.lexists(tmp_path / "mirror.previous")
    assert marker_of(tmp_path / "mirror") == "2"
    assert marker_of(tmp_path / "mirror.snapshots/spare") == "1"


def test_the_next_build_starts_from_the_spare_and_ends_as_a_fresh_one_would(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    """With ``grace`` 0 the replaced tree retires at once: the build after starts from it
    (rsync updates it in place, deleting what the upstream removed since) and the result
    is the upstream's tree, its unchanged files still shared with the current one."""
    config = snapshot_mirror(tmp_path, daemon, grace=0)
    sync(config)
    publish(upstream, "2", {"dir0/two.rpm": "two\n"})
    sync(config)
    assert "spare" in folders(tmp_path)
    (upstream / "dir0/two.rpm").unlink()
    (upstream / "dir1/file1.rpm").unlink()
    publish(upstream, "3", {"dir2/three.rpm": "three\n", "dir3/file3.rpm": "longer now\n"})
    done = sync(config)
    assert "(from the spare)" in done.stderr
    mirror = tmp_path / "mirror"
    assert marker_of(mirror) == "3"
    assert trees_equal(mirror, upstream)
    # The tree it replaced is the spare now (grace 0): unchanged files shared with it.
    spare = tmp_path / "mirror.snapshots/spare"
    assert marker_of(spare) == "2"
    assert (mirror / "dir0/file0.rpm").stat().st_ino == (spare / "dir0/file0.rpm").stat().st_ino
    status = json.loads(mirrorhook("status", "--json", "--config", config).stdout)["receiver"]
    assert [entry["role"] for entry in status["snapshots"]] == ["current", "spare"]


def test_an_existing_folder_is_taken_over_without_a_copy(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    inplace = receiver_toml(tmp_path, upstream=daemon.url)
    sync(inplace)
    mirror = tmp_path / "mirror"
    before = (mirror / "dir1/file1.rpm").stat().st_ino
    config = snapshot_mirror(tmp_path, daemon)
    described = mirrorhook("check-config", "--config", config).stdout
    assert f"{mirror} is a folder: the first sync renames it" in described
    publish(upstream, "2", {"dir0/b.rpm": "b\n"})
    sync(config)
    assert mirror.is_symlink()
    assert marker_of(mirror) == "2"
    assert (mirror / "dir1/file1.rpm").stat().st_ino == before  # linked, not copied
    assert marker_of(tmp_path / "mirror.previous") == "1"  # the folder it was, kept
    assert "takeover" not in mirrorhook("check-config", "--config", config).stdout


def test_a_snapshot_that_leaves_out_more_than_max_delete_is_not_switched_to(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    config = snapshot_mirror(tmp_path, daemon, max_delete=3)
    sync(config)
    current = link(tmp_path / "mirror")
    for index in range(5):
        (upstream / f"dir{index % 4}/file{index}.rpm").unlink()
    publish(upstream, "2")
    failed = mirrorhook("sync", "--config", config)
    assert failed.returncode != 0
    assert "leaves out 5 entries of the current one, more than max_delete (3)" in failed.stderr
    assert link(tmp_path / "mirror") == current
    assert marker_of(tmp_path / "mirror") == "1"
    assert folders(tmp_path) == [current.split("/")[1]]  # the build was removed


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
@needs("unshare", package="util-linux")
def test_a_full_disk_during_a_build_leaves_the_current_tree_serving(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    """A real full disk: the mirror's side is a 1 MiB tmpfs, mounted in a mount namespace
    of the test's own (``unshare -m``); the second publish brings a 2 MiB file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    config = receiver_toml(
        tmp_path, upstream=daemon.url, target=str(disk / "mirror"), publish="snapshot"
    )
    big = upstream / "dir0/big.rpm"
    script = (
        f'mount -t tmpfs -o size=1m tmpfs "{disk}" || exit 99\n'
        f'"$@" sync --config "{config}" || exit 98\n'
        f'head -c 2097152 /dev/urandom > "{big}"; printf "2\\n" > "{upstream}/CURRENT"\n'
        f'"$@" sync --config "{config}" 2> "{tmp_path}/second.log"; echo "exit=$?"\n'
        f'readlink "{disk}/mirror"; cat "{disk}/mirror/CURRENT"; ls "{disk}/mirror.snapshots"\n'
    )
    ran = in_mount_namespace(script)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = ran.stdout.splitlines()  # each sync's summary line, then what the script shows
    _code, link, installed, *names = shown[shown.index("exit=1") :]
    assert "No space left on device" in (tmp_path / "second.log").read_text()
    assert installed == "1"  # the current tree serves on, with its marker
    assert names == [link.split("/")[1]]  # and the half-built snapshot is gone


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a btrfs needs root")
@needs("unshare", "losetup", package="util-linux")
@needs("mkfs.btrfs", "btrfs", package="btrfs-progs")
def test_on_btrfs_each_build_is_a_snapshot_of_the_current_subvolume(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    """A real btrfs (a 256 MiB image on a loop device, mounted in a mount namespace of
    the test's own): the first build is a new subvolume, the next ones btrfs snapshots of
    the current one brought up to date (no spare: the replaced ones are within their
    grace), each a subvolume."""
    disk, image = tmp_path / "disk", tmp_path / "btrfs.img"
    disk.mkdir()
    config = receiver_toml(
        tmp_path, upstream=daemon.url, target=str(disk / "mirror"), publish="snapshot"
    )
    sync = f'"$@" sync --config "{config}" 2>> "{tmp_path}/syncs.log" >/dev/null || exit 98\n'
    script = (
        f'truncate -s 256m "{image}" && mkfs.btrfs -q "{image}" >/dev/null || exit 97\n'
        f'mount -o loop "{image}" "{disk}" || exit 99\n'
        + sync
        + f'rm "{upstream}/dir1/file1.rpm"; printf "2\\n" > "{upstream}/CURRENT"\n'
        + sync
        + f'printf "three\\n" > "{upstream}/dir2/three.rpm"; printf "3\\n" > "{upstream}/CURRENT"\n'
        + sync
        + f'cd "{disk}/mirror" && stat -c "%i" . && cat CURRENT && ls -R | wc -l\n'
        + f'ls "{disk}/mirror.snapshots"; btrfs subvolume list "{disk}" | wc -l\n'
        + f'cd /; umount "{disk}"\n'
    )
    ran = in_mount_namespace(script)
    log = (tmp_path / "syncs.log").read_text() if (tmp_path / "syncs.log").exists() else ""
    assert ran.returncode == 0, ran.stdout + ran.stderr + log
    inode, installed, _entries, *names, subvolumes = ran.stdout.split()
    assert "building snapshot" in log
    assert log.count("(a btrfs snapshot of the current one)") == 2
    assert inode == "256"  # the current tree is a subvolume's root
    assert installed == "3"
    assert len(names) == 3  # the current one and the two it replaced, within grace
    assert subvolumes == "3"


def test_a_sync_killed_at_any_moment_leaves_target_complete(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon
) -> None:
    """SIGKILL at random moments of building and switching (seeded), then a sync again:
    ``target`` resolves to a complete tree whose marker matches its content, and no
    half-built snapshot is left. A reader resolves ``target`` all along: never missing."""
    for index in range(400):  # enough that a build takes a while
        (upstream / f"bulk/{index % 20}").mkdir(parents=True, exist_ok=True)
        (upstream / f"bulk/{index % 20}/f{index}").write_text(f"{index}\n")
    config = snapshot_mirror(tmp_path, daemon, grace=0, rsync_args=["--bwlimit=400"])
    sync(config)
    mirror = tmp_path / "mirror"
    missing: list[float] = []
    stop = threading.Event()

    def read_target() -> None:
        while not stop.is_set():
            try:
                (mirror / "CURRENT").stat()
            except FileNotFoundError:
                missing.append(time.monotonic())

    reader = threading.Thread(target=read_target, daemon=True)
    reader.start()
    chance = random.Random(7)
    half_built = 0
    try:
        for value in range(2, 14):
            # A new 200 kB file each time: at rsync's --bwlimit of 400 kB/s, a build that
            # lasts some 0.5 s, for the kills to land in.
            (upstream / "bulk/big").write_bytes(random.randbytes(200_000))
            publish(upstream, str(value), {f"bulk/{value % 20}/v{value}": f"{value}\n"})
            process = subprocess.Popen(
                [*MIRRORHOOK, "sync", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(chance.uniform(0.1, 1.2))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            half_built += any(name.endswith(".partial") for name in folders(tmp_path))
            installed = marker_of(mirror)
            assert installed is not None
            # A tree's marker matches its content: publish V added bulk/.../vV.
            assert all(
                (mirror / f"bulk/{v % 20}/v{v}").is_file() for v in range(2, int(installed) + 1)
            )
        # The rsync a killed sync left behind holds the lock until it ends.
        left = ["pgrep", "-f", "mirror.snapshots"]
        wait_until(lambda: not subprocess.run(left, capture_output=True, check=False).stdout)
        sync(config)
    finally:
        stop.set()
        reader.join(5)
    assert marker_of(mirror) == "13"
    assert half_built > 0, "no kill landed during a build: the test proved nothing"
    assert not [name for name in folders(tmp_path) if name.endswith(".partial")]
    assert missing == []


def test_serve_switches_on_a_webhook_and_counts_it_in_metrics(
    tmp_path: Path, upstream: Path, daemon: RsyncDaemon, processes: Processes
) -> None:
    port = free_port()
    config = snapshot_mirror(tmp_path, daemon, grace=1, port=port)
    secret = write_secret(tmp_path / "receiver.secret")
    processes.serve(config, "mirror")
    wait_for_port(port)
    wait_until(lambda: marker_of(tmp_path / "mirror") == "1", what="the first snapshot")
    first = link(tmp_path / "mirror")
    publish(upstream, "2", {"dir0/c.rpm": "c\n"})
    body, headers = signed_webhook(signing.Secret.parse(secret), "2")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/hook", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status in (200, 202)
    wait_until(lambda: marker_of(tmp_path / "mirror") == "2", what="the switch")
    assert link(tmp_path / "mirror") != first
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "mirrorhook_snapshot_switches_total 2.0" in metrics
    # The timer measures the replaced tree between syncs (its marker, its own files).
    kept = re.compile(r"^mirrorhook_snapshot_kept_bytes ([0-9.e+]+)$", re.MULTILINE)

    def kept_bytes() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            found = kept.search(answer.read().decode())
        return float(found.group(1)) if found else 0.0

    wait_until(lambda: kept_bytes() > 0, what="the kept snapshots' disk measured", timeout=20)
    # The daemon's timer retires the replaced snapshot once its grace has passed.
    wait_until(lambda: "spare" in folders(tmp_path), what="the expiry", timeout=20)
    assert "snapshots past their grace" in processes.log("mirror")
    assert not os.path.lexists(tmp_path / "mirror.previous")


def test_a_hub_in_snapshot_mode_announces_at_its_switch_and_passes_the_change_on(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """An upstream publisher, a hub whose receiver is in snapshot mode (its tree a folder
    at first: taken over) and whose publisher watches that tree with a rescan of an hour,
    and a leaf: the leaf syncs within seconds of the hub's switch, by the change (the
    hub's walk of a snapshot is settled)."""
    tiers = three_tiers(
        tmp_path, daemon, hub_receiver={"publish": "snapshot"}, hub_publisher={"rescan": 3600}
    )
    hub_tree, leaf_tree, leaf_log = tiers.hub_tree, tiers.leaf_tree, tiers.leaf_log
    processes.serve(tiers.upstream, "upstream")
    processes.serve(tiers.hub, "hub")
    wait_until(lambda: marker_of(hub_tree) == "1", what="the hub's start-up sync")
    assert hub_tree.is_symlink()
    processes.serve(tiers.leaf, "leaf")
    wait_for_port(tiers.leaf_hook)
    wait_until(lambda: marker_of(leaf_tree) == "1", what="the leaf's start-up sync")
    wait_until(lambda: "marker '1': announcing" in processes.log("hub"), what="the hub's")

    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(leaf_tree) == "2", what="the cascade", timeout=30)
    assert "switched to snapshot" in processes.log("hub")
    assert "--files-from=" in tree_invocations(leaf_log)[-1]
    assert trees_equal(daemon.root, leaf_tree)
