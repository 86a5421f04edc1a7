"""Walking a tree into a manifest (docs/design.md#manifests): every entry with the facts
rsync -aH compares, in tree order, with digests carried over from the previous manifest."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, walk
from mirrorhook.manifest_digest import digest
from tests.trees import later_than

AWKWARD = [b"with space", b"new\nline", b"-dash", b"\xff\xfe latin", b"#hash", b"a-b", b"a.txt"]


def _write(root: Path, path: bytes, content: bytes = b"content") -> bytes:
    full = os.fsencode(root) + b"/" + path
    with open(full, "wb") as file:  # noqa: PTH123 - a bytes path (the name is not UTF-8)
        file.write(content)
    return full


def _entries(manifest: Manifest) -> dict[bytes, Entry]:
    return {entry.path: entry for entry in manifest.entries}


def test_a_walk_lists_every_entry_below_the_root_with_rsyncs_facts(tmp_path: Path) -> None:
    """Kind, size, mtime (ns), permission bits, owner, inode and symlink target of every
    file, folder and symlink; the root itself is not an entry."""
    (tmp_path / "folder").mkdir(mode=0o750)
    (tmp_path / "folder").chmod(0o750)
    _write(tmp_path, b"folder/file", b"12345")
    (tmp_path / "folder" / "file").chmod(0o640)
    os.utime(tmp_path / "folder" / "file", ns=(0, 1_234_567_891_234_567_891))
    (tmp_path / "link").symlink_to("folder/file")
    manifest = walk(tmp_path, marker="20261202")
    entries = _entries(manifest)
    assert sorted(entries) == [b"folder", b"folder/file", b"link"]
    file, folder, link = entries[b"folder/file"], entries[b"folder"], entries[b"link"]
    facts = os.lstat(tmp_path / "folder" / "file")
    assert (file.kind, file.size, file.mtime_ns, file.mode) == (
        Kind.FILE,
        5,
        facts.st_mtime_ns,
        0o640,
    )
    assert (file.uid, file.gid, file.inode) == (facts.st_uid, facts.st_gid, facts.st_ino)
    assert file.mtime_ns == 1_234_567_891_234_567_891
    assert (file.target, file.link_group, file.sha256) == (None, None, None)
    assert (folder.kind, folder.size, folder.mode) == (Kind.DIRECTORY, 0, 0o750)
    assert (link.kind, link.target, link.size) == (Kind.SYMLINK, b"folder/file", 11)
    assert manifest.marker == "20261202"


def test_names_with_spaces_newlines_dashes_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """Paths are the names' bytes, whatever they are."""
    os.mkdir(os.fsencode(tmp_path) + b"/\xff\xfe latin")  # noqa: PTH102 - bytes
    for name in AWKWARD:
        if name != b"\xff\xfe latin":
            _write(tmp_path, name)
        _write(tmp_path, b"\xff\xfe latin/" + name)
    paths = [entry.path for entry in walk(tmp_path, marker="1").entries]
    assert set(paths) == {*AWKWARD, *(b"\xff\xfe latin/" + name for name in AWKWARD)}


def test_entries_come_in_tree_order(tmp_path: Path) -> None:
    """By component, each in byte order: a folder's entries follow it at once, before
    names that sort between it and them in plain byte order ("a-b", "a.txt")."""
    (tmp_path / "a").mkdir()
    for name in ("a/x", "a-b", "a.txt", "a0", "A"):
        _write(tmp_path, name.encode())
    paths = [entry.path for entry in walk(tmp_path, marker="1").entries]
    assert paths == [b"A", b"a", b"a/x", b"a-b", b"a.txt", b"a0"]
    assert paths == sorted(paths, key=tree_key)


def test_a_symlink_to_a_folder_is_not_followed(tmp_path: Path) -> None:
    """rsync -a copies a symlink as a symlink: the walk does not list what it points at."""
    (tmp_path / "real").mkdir()
    _write(tmp_path, b"real/file")
    (tmp_path / "alias").symlink_to("real")
    paths = [entry.path for entry in walk(tmp_path, marker="1").entries]
    assert paths == [b"alias", b"real", b"real/file"]


def test_fifos_are_entries_of_the_other_kind(tmp_path: Path) -> None:
    """rsync -a implies -D and copies FIFOs and sockets: a manifest records them."""
    os.mkfifo(tmp_path / "fifo", 0o600)
    (entry,) = walk(tmp_path, marker="1").entries
    assert (entry.path, entry.kind, entry.mode, entry.size) == (b"fifo", Kind.OTHER, 0o600, 0)


def test_hard_links_share_a_group_number_in_path_order(tmp_path: Path) -> None:
    """Files that are one inode within the tree share a number, 1, 2, ... in path order of
    their first member; a file whose only other link is outside the tree has none."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    for name in ("b1", "a1", "lone"):
        _write(tree, name.encode())
    os.link(tree / "b1", tree / "b2")
    os.link(tree / "a1", tree / "c-a2")
    os.link(tree / "lone", outside / "lone")
    groups = {entry.path: entry.link_group for entry in walk(tree, marker="1").entries}
    assert groups == {b"a1": 1, b"b1": 2, b"b2": 2, b"c-a2": 1, b"lone": None}


def test_digests_are_reused_without_reading_the_file_again(tmp_path: Path) -> None:
    """A file whose path, size, mtime and inode are those of the previous manifest keeps
    its digest: new content of the same size written in place, with the mtime put back,
    still has the old content's digest, so the walk did not read it."""
    _write(tmp_path, b"file", b"old content")
    first = digest(walk(tmp_path, marker="1"), tmp_path).manifest
    facts = os.lstat(tmp_path / "file")
    with (tmp_path / "file").open("r+b") as file:
        file.write(b"new content")
    os.utime(tmp_path / "file", ns=(facts.st_atime_ns, facts.st_mtime_ns))
    second = walk(tmp_path, first, marker="2")
    (entry,) = second.entries
    assert entry.sha256 == hashlib.sha256(b"old content").digest()
    assert second.undigested == 0
    assert digest(second, tmp_path).hashed == 0


@pytest.mark.parametrize("change", ["mtime", "size", "inode", "path"])
def test_a_changed_file_loses_its_digest(tmp_path: Path, change: str) -> None:
    """A new mtime, a new size, a new inode (a file renamed over it, even with the same
    size and mtime) or a new path: the walk leaves the digest to ``digest``."""
    _write(tmp_path, b"file", b"content")
    first = digest(walk(tmp_path, marker="1"), tmp_path).manifest
    facts = os.lstat(tmp_path / "file")
    if change == "mtime":
        os.utime(tmp_path / "file", ns=(facts.st_atime_ns, facts.st_mtime_ns + 1))
    elif change == "size":
        _write(tmp_path, b"file", b"longer content")
        os.utime(tmp_path / "file", ns=(facts.st_atime_ns, facts.st_mtime_ns))
    elif change == "inode":
        _write(tmp_path, b"new", b"CONTENT")
        os.utime(tmp_path / "new", ns=(facts.st_atime_ns, facts.st_mtime_ns))
        (tmp_path / "new").replace(tmp_path / "file")
    else:
        (tmp_path / "file").rename(tmp_path / "renamed")
    second = walk(tmp_path, first, marker="2")
    (entry,) = second.entries
    assert entry.sha256 is None
    assert second.undigested == 1


def test_digests_carry_over_past_added_and_removed_paths(tmp_path: Path) -> None:
    """The previous manifest is followed in order: entries added or removed before a
    file do not cost it its digest."""
    for name in (b"b", b"d", b"f"):
        _write(tmp_path, name)
    first = digest(walk(tmp_path, marker="1"), tmp_path).manifest
    (tmp_path / "b").unlink()
    _write(tmp_path, b"a")
    (tmp_path / "c").mkdir()
    _write(tmp_path, b"c/x")
    (tmp_path / "f").unlink()
    _write(tmp_path, b"g")
    second = _entries(walk(tmp_path, first, marker="2"))
    assert second[b"d"].sha256 == _entries(first)[b"d"].sha256 is not None
    assert [
        path for path, entry in second.items() if entry.kind is Kind.FILE and not entry.sha256
    ] == [
        b"a",
        b"c/x",
        b"g",
    ]


def test_get_finds_an_entry_by_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _write(tmp_path, b"a/x")
    _write(tmp_path, b"a-b")
    manifest = walk(tmp_path, marker="1")
    found = manifest.get(b"a/x")
    assert found is not None
    assert found.kind is Kind.FILE
    assert manifest.get(b"a/y") is None
    assert manifest.get(b"a-b") is not None
    assert len(manifest) == 3


def test_a_tree_that_cannot_be_opened_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot open the tree"):
        walk(tmp_path / "missing", marker="1")
    _write(tmp_path, b"file")
    with pytest.raises(ManifestError, match="cannot open the tree"):
        walk(tmp_path / "file", marker="1")


def test_the_walk_uses_the_clock_for_the_creation_time(tmp_path: Path) -> None:
    assert walk(tmp_path, marker="1", clock=lambda: 1234.5).created == 1234.5
    assert stat.S_ISDIR(os.lstat(tmp_path).st_mode)


@pytest.mark.parametrize("change", ["written", "removed", "folder added"])
def test_a_walk_that_meets_the_tree_changed_after_since_is_not_settled(
    tmp_path: Path, change: str
) -> None:
    """What changed after ``since_ns`` (the marker's ctime, for a publisher) is not part of
    the marker's publish: a file written, a name removed (its folder changed), a folder
    made. The same tree without the change is settled."""
    (tmp_path / "dir").mkdir()
    _write(tmp_path, b"dir/old")
    _write(tmp_path, b"CURRENT", b"1\n")
    since = (tmp_path / "CURRENT").stat().st_ctime_ns
    assert walk(tmp_path, marker="1", since_ns=since).settled
    later_than(tmp_path / "CURRENT")
    if change == "written":
        _write(tmp_path, b"dir/old", b"rewritten")
    elif change == "removed":
        (tmp_path / "dir" / "old").unlink()
    else:
        (tmp_path / "dir" / "sub").mkdir()
    assert not walk(tmp_path, marker="1", since_ns=since).settled


def test_exempt_files_and_their_folder_do_not_unsettle_a_walk(tmp_path: Path) -> None:
    """A hub's receiver writes its trace and lastsync after the marker: they, and the
    folders they are renamed into, are no publish under way; anything else still is."""
    (tmp_path / "project" / "trace").mkdir(parents=True)
    _write(tmp_path, b"CURRENT", b"1\n")
    since = (tmp_path / "CURRENT").stat().st_ctime_ns
    later_than(tmp_path / "CURRENT")
    _write(tmp_path, b"project/trace/.tmp", b"trace")
    (tmp_path / "project" / "trace" / ".tmp").rename(tmp_path / "project" / "trace" / "hub")
    _write(tmp_path, b"lastsync", b"1700000000\n")
    exempt = frozenset({b"project/trace/hub", b"lastsync"})
    assert walk(tmp_path, marker="1", since_ns=since, exempt=exempt).settled
    assert not walk(tmp_path, marker="1", since_ns=since, exempt=frozenset({b"lastsync"})).settled
    _write(tmp_path, b"project/other")
    assert not walk(tmp_path, marker="1", since_ns=since, exempt=exempt).settled
