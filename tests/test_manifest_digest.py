"""Hashing a manifest's files after its walk (docs/design.md#manifests): never a wrong
digest for a file that changed, within a budget, resumable."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Kind, walk
from mirrorhook.manifest_digest import digest


def _tree(root: Path, count: int) -> None:
    (root / "sub").mkdir()
    for number in range(count):
        (root / ("sub" if number % 2 else ".") / f"file{number}").write_bytes(b"%d" % number)


def test_every_file_gets_its_sha256(tmp_path: Path) -> None:
    """Folders and symlinks get none; hard links (one group) get the same."""
    _tree(tmp_path, 4)
    os.link(tmp_path / "file0", tmp_path / "sub" / "linked")
    (tmp_path / "link").symlink_to("file0")
    done = digest(walk(tmp_path, marker="1"), tmp_path)
    assert (done.hashed, done.skipped, done.resume_at) == (5, 0, None)
    for entry in done.manifest.entries:
        if entry.kind is Kind.FILE:
            content = (tmp_path / os.fsdecode(entry.path)).read_bytes()
            assert entry.sha256 == hashlib.sha256(content).digest()
        else:
            assert entry.sha256 is None
    assert done.manifest.undigested == 0
    assert done.manifest.marker == "1"


def test_a_file_changed_since_the_walk_gets_no_digest(tmp_path: Path) -> None:
    """Rewritten after the walk (another size), or replaced (another inode): left
    without a digest, and counted as skipped, not given the new content's digest."""
    _tree(tmp_path, 3)
    manifest = walk(tmp_path, marker="1")
    (tmp_path / "file0").write_bytes(b"something else")
    (tmp_path / "other").write_bytes(b"2")
    (tmp_path / "other").replace(tmp_path / "file2")
    done = digest(manifest, tmp_path)
    assert (done.hashed, done.skipped) == (1, 2)
    digests = {entry.path: entry.sha256 for entry in done.manifest.entries}
    assert digests[b"file0"] is None
    assert digests[b"file2"] is None
    assert digests[b"sub/file1"] == hashlib.sha256(b"1").digest()


def test_a_file_written_to_while_it_is_read_gets_no_digest(tmp_path: Path) -> None:
    """A write during the read (here 256 MiB of a sparse file, some 0.6 s of hashing, and
    a write after 50 ms) shows in the size, mtime and ctime after the read: no digest."""
    big = tmp_path / "big"
    with big.open("wb") as file:
        file.truncate(256 << 20)
    manifest = walk(tmp_path, marker="1")

    def append() -> None:
        time.sleep(0.05)
        with big.open("ab") as file:
            file.write(b"more")

    writer = threading.Thread(target=append)
    writer.start()
    try:
        done = digest(manifest, tmp_path)
    finally:
        writer.join()
    assert (done.hashed, done.skipped) == (0, 1)
    assert done.manifest.entries[0].sha256 is None


def test_a_file_whose_mtime_is_put_back_while_it_is_read_gets_no_digest(tmp_path: Path) -> None:
    """The same mtime and size after the read, but a new ctime (``utime`` sets it): the
    file may have been rewritten and its mtime restored, so no digest either."""
    big = tmp_path / "big"
    with big.open("wb") as file:
        file.truncate(256 << 20)
    manifest = walk(tmp_path, marker="1")
    facts = big.stat()

    def restore() -> None:
        time.sleep(0.05)
        os.utime(big, ns=(facts.st_atime_ns, facts.st_mtime_ns))

    writer = threading.Thread(target=restore)
    writer.start()
    started = time.monotonic()
    try:
        done = digest(manifest, tmp_path)
    finally:
        writer.join()
    if time.monotonic() - started < 0.05:  # pragma: no cover - the read beat the writer
        pytest.skip("the file was read before the writer woke: nothing to see")
    assert done.manifest.entries[0].sha256 is None


def test_a_budget_stops_the_hashing_and_it_resumes_where_it_stopped(tmp_path: Path) -> None:
    """With a budget, a call hashes what fits (at least one file) and says where to go
    on; calls resumed there hash each file once and end with ``resume_at`` None."""
    _tree(tmp_path, 7)
    ticks = iter(range(1000))
    manifest = walk(tmp_path, marker="1")
    calls, hashed, resume = 0, 0, None
    while True:
        done = digest(
            manifest, tmp_path, budget_seconds=1.5, resume_at=resume, clock=lambda: next(ticks)
        )
        calls += 1
        hashed += done.hashed
        manifest, resume = done.manifest, done.resume_at
        if resume is None:
            break
    assert (hashed, manifest.undigested) == (7, 0)
    assert calls == 4


def test_a_missing_tree_is_an_error(tmp_path: Path) -> None:
    manifest = walk(tmp_path, marker="1")
    with pytest.raises(ManifestError, match="cannot open the tree"):
        digest(manifest, tmp_path / "gone")


def test_a_symlink_swapped_in_for_a_folder_is_not_followed(tmp_path: Path) -> None:
    """After the walk a folder becomes a symlink to another folder with a file of the same
    name: the hashing does not follow it (the file is not the one the walk saw)."""
    (tmp_path / "tree" / "folder").mkdir(parents=True)
    (tmp_path / "tree" / "folder" / "secret").write_bytes(b"public")
    manifest = walk(tmp_path / "tree", marker="1")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tree" / "folder" / "secret").rename(tmp_path / "elsewhere" / "secret")
    (tmp_path / "tree" / "folder").rmdir()
    (tmp_path / "tree" / "folder").symlink_to(tmp_path / "elsewhere")
    done = digest(manifest, tmp_path / "tree")
    assert (done.hashed, done.skipped) == (0, 1)
