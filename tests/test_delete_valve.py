"""The safety valve (docs/design.md#the-safety-valve): a publish that removes more than
``max_delete_fraction`` of the mirror's files is refused before any transfer, the full
transfer is held back too, and ``mirrorhook sync --allow-deletes`` applies it once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mirrorhook.changes import Change, decode_change, diff
from mirrorhook.delete_valve import DeletesRefusedError, check, too_many_deletes
from mirrorhook.errors import ChangeError
from mirrorhook.manifest import walk
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import Held
from tests.helpers import (
    Processes,
    RsyncDaemon,
    make_upstream,
    marker_of,
    mirrorhook,
    publish,
    receiver_config,
    tree_invocations,
    trees_equal,
    wait_until,
)
from tests.pushed import pushed_mirror


def valve(tmp_path: Path, fraction: float = 0.1) -> ReceiverConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = receiver_config(
        tmp_path, upstream="rsync://127.0.0.1:9/up/", max_delete_fraction=fraction
    ).receiver
    assert config is not None
    return config


def removing(removed_files: int, from_files: int = 100) -> Change:
    paths = tuple(f"f{index:03}".encode() for index in range(removed_files))
    return Change("1", "2", (), paths, from_files=from_files, removed_files=removed_files)


def test_the_valve_lets_through_up_to_its_share_of_the_files(tmp_path: Path) -> None:
    config = valve(tmp_path)
    assert too_many_deletes(config, removing(10)) is None  # 10 of 100: the limit itself
    reason = too_many_deletes(config, removing(11))
    assert reason == (
        "the publish of marker '2' removes 11 of the 100 files of marker '1' (11%), "
        "more than max_delete_fraction 0.1"
    )
    assert too_many_deletes(valve(tmp_path / "all", 1.0), removing(100)) is None
    # A change that does not say its counts (an older publisher), or no change: no weight.
    assert too_many_deletes(config, Change("1", "2", (), (b"a",))) is None
    assert too_many_deletes(config, None) is None


def test_a_hold_refuses_every_sync_without_a_change_that_passes(tmp_path: Path) -> None:
    config = valve(tmp_path)
    with pytest.raises(DeletesRefusedError, match="removes 50 of the 100") as refused:
        check(config, removing(50), None)
    assert refused.value.new
    held = Held("2", refused.value.reason, "2026-12-03T08:00:00Z")
    with pytest.raises(DeletesRefusedError, match="held since 2026-12-03T08:00:00Z") as again:
        check(config, None, held)  # a full transfer would delete the same files
    assert not again.value.new
    assert "mirrorhook sync --allow-deletes" in str(again.value)
    check(config, removing(1), held)  # a later publish that restores them: it goes on


def test_a_change_says_how_many_files_it_removes_and_the_wire_keeps_it(tmp_path: Path) -> None:
    root = make_upstream(tmp_path / "up", count=12)
    before = walk(root, marker="1")
    shutil.rmtree(root / "dir1")  # three files
    (root / "dir2" / "file2.rpm").unlink()
    (root / "dir3" / "gone").symlink_to("file3.rpm")
    publish(root, "2")
    change = diff(before, walk(root, marker="2"))
    assert (change.from_files, change.removed_files) == (13, 4)  # the marker is a file too
    assert change.removed[0] == b"dir1"  # the folder, its files, and the other file
    decoded = decode_change(change.encode(), 100)
    assert (decoded.from_files, decoded.removed_files) == (13, 4)


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        ({"from_files": 3}, "must both be integers"),
        ({"from_files": 3, "removed_files": "1"}, "must both be integers"),
        ({"from_files": 3, "removed_files": True}, "must both be integers"),
        ({"from_files": 3, "removed_files": 2}, "not between 0 and from_files 3 or the 1"),
        ({"from_files": 0, "removed_files": 1}, "not between 0 and from_files 0"),
        ({"from_files": 3, "removed_files": -1}, "not between"),
    ],
)
def test_counts_that_do_not_fit_the_change_refuse_it(
    counts: dict[str, object], problem: str
) -> None:
    document = json.loads(Change("1", "2", (), (b"a",)).encode()) | counts
    with pytest.raises(ChangeError, match=problem):
        decode_change(json.dumps(document).encode(), 100)


@pytest.mark.slow
def test_a_publish_that_removes_half_the_tree_is_held_until_allow_deletes(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """Pushed by webhook with its change inline: refused, nothing transferred; a full
    `mirrorhook sync` (the publisher down: no change to weigh) is held back too;
    `--allow-deletes` applies it; the hold ends, and the next publish syncs by its change."""
    mirrored = pushed_mirror(tmp_path, processes, daemon)
    tree, log = mirrored.tree, mirrored.rsync_log
    kept = {path.relative_to(tree) for path in tree.rglob("*")}
    runs = len(tree_invocations(log))

    shutil.rmtree(daemon.root / "dir1")
    shutil.rmtree(daemon.root / "dir2")
    publish(daemon.root, "2")
    wait_until(lambda: status(mirrored.config)["last_sync"] is not None, what="a sync")
    wait_until(lambda: status(mirrored.config)["held"] is not None, what="the hold")
    shown = status(mirrored.config)
    assert shown["last_sync"]["result"] == "failed"
    assert "removes 10 of the 21 files of marker '1' (48%)" in shown["held"]["reason"]
    assert shown["held"]["marker"] == "2"
    assert marker_of(tree) == "1"
    assert {path.relative_to(tree) for path in tree.rglob("*")} == kept
    assert len(tree_invocations(log)) == runs  # refused before any transfer
    text = mirrorhook("status", "-c", mirrored.config).stdout
    assert "held:" in text
    assert "mirrorhook sync --allow-deletes" in text

    again = mirrorhook("sync", "-c", mirrored.config)  # it fetches the change: refused
    assert again.returncode == 1
    assert "removes 10 of the 21 files" in again.stderr
    mirrored.publisher.terminate()  # no change to weigh: a full transfer is held back too
    mirrored.publisher.wait(15)
    held = mirrorhook("sync", "-c", mirrored.config)
    assert held.returncode == 1
    assert "held since" in held.stderr
    assert marker_of(tree) == "1"
    assert len(tree_invocations(log)) == runs

    applied = mirrorhook("sync", "-c", mirrored.config, "--allow-deletes")
    assert applied.returncode == 0, applied.stderr
    assert marker_of(tree) == "2"
    assert trees_equal(daemon.root, tree)
    assert status(mirrored.config)["held"] is None

    processes.serve(mirrored.publisher_config, "publisher")
    wait_until(lambda: "marker '2': announcing" in processes.log("publisher"), what="back")
    publish(daemon.root, "3", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(tree) == "3", what="the next publish")
    assert "--files-from=" in tree_invocations(log)[-1]


@pytest.mark.slow
def test_a_hold_ends_when_the_upstream_restores_what_it_removed(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """The upstream lost a folder, then put it back: the change from the mirror's marker to
    the restoring publish removes nothing, so the daemon syncs by it and the hold ends."""
    mirrored = pushed_mirror(tmp_path, processes, daemon)
    saved = tmp_path / "saved"
    shutil.copytree(daemon.root / "dir1", saved / "dir1", symlinks=True)
    shutil.copytree(daemon.root / "dir2", saved / "dir2", symlinks=True)
    shutil.rmtree(daemon.root / "dir1")
    shutil.rmtree(daemon.root / "dir2")
    publish(daemon.root, "2")
    wait_until(lambda: status(mirrored.config)["held"] is not None, what="the hold")
    for name in ("dir1", "dir2"):
        shutil.copytree(saved / name, daemon.root / name, symlinks=True)
    publish(daemon.root, "3", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(mirrored.tree) == "3", what="the restoring publish")
    assert status(mirrored.config)["held"] is None
    assert trees_equal(daemon.root, mirrored.tree)


def status(config: Path) -> dict[str, Any]:
    """The mirror's ``status --json``."""
    receiver: dict[str, Any] = json.loads(mirrorhook("status", "-c", config, "--json").stdout)[
        "receiver"
    ]
    return receiver
