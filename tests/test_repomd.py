"""The repomd.xml versions a Metalink vouches for: digests, alternates, bounds, the tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mirrorhook import repomd
from mirrorhook.repomd import RepomdError, RepomdVersions, repo_path
from mirrorhook.state import read_json
from tests.helpers import Clock, until


def _publish(root: Path, path: str, text: str) -> Path:
    """Write ``path``'s repomd.xml as a publish does: a new file renamed over the old one."""
    target = root / path / repomd.REPOMD
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(".repomd.xml.new")
    temp.write_text(text)
    temp.replace(target)
    return target


async def test_the_current_version_carries_the_files_size_mtime_and_digests(
    tmp_path: Path,
) -> None:
    root = tmp_path / "tree"
    target = _publish(root, "el9/x86_64", "<repomd>one</repomd>\n")
    versions = RepomdVersions(root, tmp_path / "state", window=900)
    current, alternates = await versions.versions("el9/x86_64")
    data = target.read_bytes()
    assert current.size == len(data)
    assert current.mtime == int(target.stat().st_mtime)
    assert current.sha256 == hashlib.sha256(data).hexdigest()
    assert current.sha512 == hashlib.sha512(data).hexdigest()
    assert alternates == []


async def test_an_unchanged_file_is_not_hashed_again(tmp_path: Path) -> None:
    """The digests are reused while the file's inode, size and mtime stay: the same bytes
    rewritten in place with its old mtime are not read (the digest of the first stays)."""
    root = tmp_path / "tree"
    target = _publish(root, "", "<repomd>one</repomd>\n")
    versions = RepomdVersions(root, tmp_path / "state", window=900)
    first, _ = await versions.versions("")
    stamp = target.stat().st_mtime_ns
    with target.open("r+") as file:  # same inode, same size
        file.write("<repomd>two</repomd>\n")
    os.utime(target, ns=(stamp, stamp))
    again, _ = await versions.versions("")
    assert again.sha256 == first.sha256


async def test_a_replaced_version_is_an_alternate_for_the_window_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    root = tmp_path / "tree"
    clock = Clock(1_000_000.0)
    _publish(root, "el9", "<repomd>one</repomd>\n")
    versions = RepomdVersions(root, tmp_path / "state", window=900, clock=clock)
    old, _ = await versions.versions("el9")
    clock.now += 60
    _publish(root, "el9", "<repomd>two, longer</repomd>\n")
    new, alternates = await versions.versions("el9")
    assert new.sha256 != old.sha256
    assert [a.sha256 for a in alternates] == [old.sha256]
    assert alternates[0].replaced_at == clock.now
    restarted = RepomdVersions(root, tmp_path / "state", window=900, clock=clock)
    _same, kept = await restarted.versions("el9")
    assert [a.sha256 for a in kept] == [old.sha256]
    clock.now += 901
    _same, expired = await restarted.versions("el9")
    assert expired == []


async def test_refresh_dates_a_replaced_version_at_the_publish(tmp_path: Path) -> None:
    """After a publish the known paths are re-read at once: an alternate's window counts
    from the publish, not from the next request, which may come much later."""
    root = tmp_path / "tree"
    clock = Clock(1_000_000.0)
    _publish(root, "el9", "<repomd>one</repomd>\n")
    versions = RepomdVersions(root, tmp_path / "state", window=900, clock=clock)
    await versions.versions("el9")
    _publish(root, "el9", "<repomd>two, longer</repomd>\n")
    published_at = clock.now = clock.now + 10
    await versions.refresh()
    clock.now += 500
    _current, alternates = await versions.versions("el9")
    assert [a.replaced_at for a in alternates] == [published_at]


async def test_the_alternates_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    clock = Clock(1_000_000.0)
    versions = RepomdVersions(root, tmp_path / "state", window=10**6, clock=clock)
    for number in range(repomd.MAX_ALTERNATES + 5):
        _publish(root, "", f"<repomd>{number}{'.' * number}</repomd>\n")
        clock.now += 1
        await versions.versions("")
    _current, alternates = await versions.versions("")
    assert len(alternates) == repomd.MAX_ALTERNATES


async def test_paths_asked_for_are_remembered_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may ask for any path: beyond MAX_PATHS they are answered, not remembered."""
    monkeypatch.setattr(repomd, "MAX_PATHS", 3)
    root = tmp_path / "tree"
    versions = RepomdVersions(root, tmp_path / "state", window=900)
    for number in range(6):
        _publish(root, f"p{number}", "<repomd/>\n")
        current, _ = await versions.versions(f"p{number}")
        assert current.size == len("<repomd/>\n")
    assert versions.known() == ["p0", "p1", "p2"]


async def test_no_file_outside_the_tree_is_read_whatever_its_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    outside = tmp_path / "secret" / "repodata"
    outside.mkdir(parents=True)
    (outside / "repomd.xml").write_text("not the tree's\n")
    root.mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "repodata").mkdir()
    (root / "repodata" / "repomd.xml").symlink_to(outside / "repomd.xml")
    _publish(root, "real", "<repomd/>\n")
    (root / "alias").symlink_to(root / "real")  # inside the tree: fine
    versions = RepomdVersions(root, tmp_path / "state", window=900)
    for path in ("escape", ""):
        with pytest.raises(RepomdError, match="outside the tree"):
            await versions.versions(path)
    with pytest.raises(RepomdError, match=r"no repodata/repomd\.xml at missing"):
        await versions.versions("missing")
    current, _ = await versions.versions("alias")
    assert current.size == len("<repomd/>\n")


async def test_a_repomd_that_is_no_regular_file_or_too_large_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "fifo" / "repodata").mkdir(parents=True)
    os.mkfifo(root / "fifo" / repomd.REPOMD)
    big = _publish(root, "big", "")
    big.write_bytes(b"x" * (repomd.MAX_REPOMD + 1))
    versions = RepomdVersions(root, tmp_path / "state", window=900)
    with pytest.raises(RepomdError, match="not a regular file"):
        await versions.versions("fifo")
    with pytest.raises(RepomdError, match="larger than"):
        await versions.versions("big")


def test_a_record_that_does_not_read_back_is_left_out(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / repomd.STATE_NAME).write_text(
        '{"paths": {"a": [{"size": "x"}], "b": "no", "c": [{"size": 1, "mtime": 2, '
        '"sha256": "s", "sha512": "t", "identity": [1, 2, 3, 4]}]}}'
    )
    assert RepomdVersions(tmp_path, state, window=900).known() == ["c"]


@pytest.mark.parametrize(
    ("text", "path"),
    [("el9/x86_64", "el9/x86_64"), ("", ""), ("9//x86_64/", "9/x86_64")],
)
def test_a_repository_path_is_relative_plain_names(text: str, path: str) -> None:
    assert repo_path(text) == path


@pytest.mark.parametrize(
    "text", ["/", "../etc", "é", "a/../../b", "a/./b", "/abs", "a b", "a\x00b", "%2e%2e", "x" * 300]
)
def test_a_repository_path_that_could_leave_the_tree_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="path"):
        repo_path(text)


async def test_a_publish_rereads_the_known_paths_in_the_background(tmp_path: Path) -> None:
    """``published`` (the watcher's announce) re-reads what was asked for so far without
    waiting for a request; ``close`` ends such a refresh."""
    root = tmp_path / "tree"
    clock = Clock(1_000_000.0)
    _publish(root, "el9", "<repomd>one</repomd>\n")
    versions = RepomdVersions(root, tmp_path / "state", window=900, clock=clock)
    await versions.versions("el9")
    _publish(root, "el9", "<repomd>two, longer</repomd>\n")
    published_at = clock.now = clock.now + 10
    versions.published()
    record = tmp_path / "state" / repomd.STATE_NAME
    await until(lambda: len(read_json(record).get("paths", {}).get("el9", [])) == 2)
    clock.now += 500
    _current, alternates = await versions.versions("el9")
    assert [a.replaced_at for a in alternates] == [published_at]
    await versions.close()
