"""The publisher's manifests of one tree (manifest_keeper.py) with real files: the change
from one publish to the next, and none from a manifest whose walk met the tree changing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook.changes import Change
from mirrorhook.manifest_keeper import ManifestKeeper
from mirrorhook.publisher_config import PublisherConfig
from tests.trees import later_than


def _keeper(tmp_path: Path, *, after_marker: tuple[str, ...] = ()) -> ManifestKeeper:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "old.rpm").write_text("old\n")
    (root / "CURRENT").write_text("1\n")
    tree = PublisherConfig(root, tmp_path / "state", (), after_marker=after_marker)
    return ManifestKeeper(tree)


def _publish(root: Path, marker: str, path: str) -> None:
    later_than(root / "CURRENT")
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(f"{marker}\n")
    (root / "CURRENT").write_text(f"{marker}\n")


@pytest.mark.parametrize("under_way", [False, True])
async def test_no_change_is_made_from_a_manifest_taken_while_a_publish_was_under_way(
    tmp_path: Path, under_way: bool
) -> None:
    """The publisher starts (or walks marker 1) while the next publish has begun: new.rpm
    is written, CURRENT still reads 1. That manifest lists new.rpm under marker 1, so the
    change 1 -> 2 would leave it out and a mirror at 1 would never fetch it: no change is
    made from it, and mirrors do a full sync. A publish that waited is announced by change."""
    keeper = _keeper(tmp_path)
    root = keeper.tree.root
    await keeper.start()
    if under_way:
        later_than(root / "CURRENT")
        (root / "new.rpm").write_text("2\n")
    assert await keeper.published("1") is None  # the first manifest: nothing to diff
    assert keeper.current is not None
    assert keeper.current.settled is not under_way
    _publish(root, "2", "new.rpm")
    change = await keeper.published("2")
    if under_way:
        assert change is None
        assert await keeper.change_from("1") is None  # nor when asked for it later
    else:
        assert isinstance(change, Change)
        assert [path for path, _kind in change.changed] == [b"CURRENT", b"new.rpm"]
    await keeper.close()


async def test_a_hubs_own_trace_written_after_the_marker_leaves_the_manifest_settled(
    tmp_path: Path,
) -> None:
    """A hub's receiver writes its trace just after installing the marker, while its
    publisher may already be walking: that is no publish under way."""
    keeper = _keeper(tmp_path, after_marker=("project/trace/hub",))
    root = keeper.tree.root
    (root / "project" / "trace").mkdir(parents=True)  # by the first sync's trace
    (root / "CURRENT").write_text("1\n")
    await keeper.start()
    later_than(root / "CURRENT")
    (root / "project" / "trace" / "hub").write_text("trace\n")
    await keeper.published("1")
    assert keeper.current is not None
    assert keeper.current.settled
    await keeper.close()


async def test_a_marker_rewritten_before_its_walk_makes_an_unsettled_manifest(
    tmp_path: Path,
) -> None:
    """The walk for marker 1 finds CURRENT already at 2: what it sees is not marker 1's."""
    keeper = _keeper(tmp_path)
    await keeper.start()
    (keeper.tree.root / "CURRENT").write_text("2\n")
    await keeper.published("1")
    assert keeper.current is not None
    assert not keeper.current.settled
    await keeper.close()
