"""The publisher's manifests of one tree (manifest_keeper.py) with real files: the change
from one publish to the next, none from a manifest whose walk met the tree changing, and
a change many mirrors ask for made once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from mirrorhook.changes import Change
from mirrorhook.manifest import Manifest
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


async def _digested(keeper: ManifestKeeper) -> None:
    """Wait (bounded) until the background hashing has every digest of the current manifest."""
    for _ in range(1000):
        if keeper.current is not None and keeper.current.undigested == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the digests of the current manifest were not all made in 10 s")


async def _three_publishes(tmp_path: Path) -> ManifestKeeper:
    """A keeper that kept the manifests of markers 1, 2 and 3."""
    keeper = _keeper(tmp_path)
    root = keeper.tree.root
    await keeper.start()
    await keeper.published("1")
    for marker, path in (("2", "a/two.rpm"), ("3", "b/three.rpm")):
        _publish(root, marker, path)
        await keeper.published(marker)
    return keeper


class _Reads:
    """Counts the keeper's real reads of its kept manifests (a spy, not a stand-in): which,
    and how many at most at once; each is held ``hold`` seconds, so overlaps would show."""

    def __init__(self, keeper: ManifestKeeper, hold: float = 0.0) -> None:
        self.markers: list[str] = []
        self.most_at_once = 0
        self._at_once = 0
        self._lock = threading.Lock()
        self._load = keeper._store.load
        self._hold = hold
        keeper._store.load = self._counted  # type: ignore[method-assign]

    def _counted(self, marker: str) -> Manifest | None:
        with self._lock:
            self.markers.append(marker)
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
        time.sleep(self._hold)
        try:
            return self._load(marker)
        finally:
            with self._lock:
                self._at_once -= 1


async def test_mirrors_asking_at_once_for_one_change_have_it_made_once(tmp_path: Path) -> None:
    """Every mirror that missed the same publishes asks for the same change at the same
    moment: one kept manifest is read and diffed for all of them, and the answer is kept for
    the next mirror until the next publish."""
    keeper = await _three_publishes(tmp_path)
    root = keeper.tree.root
    reads = _Reads(keeper)
    answers = await asyncio.gather(*(keeper.change_from("1") for _ in range(20)))
    assert reads.markers == ["1"]
    first = answers[0]
    assert first is not None
    assert (first.from_marker, first.to_marker) == ("1", "3")
    assert [path for path, _kind in first.changed] == [
        b"CURRENT",
        b"a",
        b"a/two.rpm",
        b"b",
        b"b/three.rpm",
    ]
    assert all(answer == first for answer in answers)
    assert await keeper.change_from("1") == first  # kept for the next mirror
    assert reads.markers == ["1"]
    assert await keeper.change_from("never-published") is None  # nothing read, nothing kept
    assert reads.markers == ["1"]
    _publish(root, "4", "c/four.rpm")
    await keeper.published("4")
    later = await keeper.change_from("1")  # to the new current manifest: made again
    assert later is not None
    assert later.to_marker == "4"
    assert b"c/four.rpm" in [path for path, _kind in later.changed]
    assert reads.markers == ["1", "1"]
    await keeper.close()


async def test_changes_from_different_markers_are_made_one_at_a_time(tmp_path: Path) -> None:
    """Each answer holds a whole kept manifest in memory: mirrors at markers 1 and 2 asking
    at once have them read one after the other, each once; the last publish's own change
    (from 3) was kept as the publish made it, and reads nothing."""
    keeper = await _three_publishes(tmp_path)
    _publish(keeper.tree.root, "4", "c/four.rpm")
    await keeper.published("4")
    reads = _Reads(keeper, hold=0.2)
    asked = ("1", "2", "3", "1", "2")
    answers = await asyncio.gather(*(keeper.change_from(marker) for marker in asked))
    assert sorted(reads.markers) == ["1", "2"]
    assert reads.most_at_once == 1
    assert [(a.from_marker, a.to_marker) for a in answers if a is not None] == [
        (marker, "4") for marker in asked
    ]
    await keeper.close()


async def test_a_publish_kept_while_the_last_ones_digests_are_made_is_hashed_too(
    tmp_path: Path,
) -> None:
    """Marker 1's tree has a large file (sparse: 400 MB to hash, about a second), so its
    digests are still being made when marker 2 is published and kept; the hashing goes on
    with marker 2's manifest instead of leaving it without digests until a third publish."""
    keeper = _keeper(tmp_path)
    root = keeper.tree.root
    with (root / "large.iso").open("wb") as large:
        large.truncate(400 * 2**20)
    await keeper.start()
    await keeper.published("1")
    assert keeper.current is not None
    assert keeper.current.undigested  # the hashing has begun, in the background
    _publish(root, "2", "two.rpm")
    await keeper.published("2")
    await _digested(keeper)
    assert keeper.current.marker == "2"
    await keeper.close()
