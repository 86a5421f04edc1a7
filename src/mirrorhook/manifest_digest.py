"""The digests of a manifest's files, computed after its walk (docs/design.md#manifests).

``walk`` leaves new and changed files without a sha256, so that a publish is announced as
soon as the tree has been listed; ``digest`` hashes them afterwards, within a time budget
if asked and resumable, so that a first build of a large tree can hash in the background
for hours and save its progress on the way.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""``O_NONBLOCK``: a file replaced by a FIFO since the walk must not hang the hashing."""
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Digested:
    """What one call of ``digest`` did."""

    manifest: Manifest
    """The manifest with the digests found so far."""
    hashed: int
    """Files given a digest by this call."""
    skipped: int
    """Files left without one: changed since the walk or while being read, gone, or
    unreadable. A later call tries them again."""
    resume_at: bytes | None
    """The path to pass as ``resume_at`` to go on where the budget ran out; ``None`` when
    every file without a digest has been tried."""


def digest(
    manifest: Manifest,
    root: Path | str,
    *,
    budget_seconds: float | None = None,
    resume_at: bytes | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Digested:
    """Hash the files of ``manifest`` that have no digest yet, reading them below ``root``.

    A file is hashed only while it is the one the walk saw (same inode, size and mtime)
    and only when its size, mtime and ctime are the same after the read as before it: a
    file changed meanwhile stays without a digest rather than getting a wrong one. Files
    of one hardlink group are read once. Files come in the manifest's order from
    ``resume_at`` on; after ``budget_seconds`` (at least one file is tried) the call stops
    and says where to resume. Raises ``ManifestError`` when ``root`` cannot be opened.
    """
    entries = list(manifest.entries)
    start = 0
    if resume_at is not None:
        start = bisect.bisect_left(entries, tree_key(resume_at), key=_key_of)
    deadline = None if budget_seconds is None else clock() + budget_seconds
    hashed = skipped = 0
    groups: dict[int, bytes] = {}
    resume: bytes | None = None
    with TreeFolders(root) as folders:
        for index in range(start, len(entries)):
            entry = entries[index]
            if entry.kind is not Kind.FILE or entry.sha256 is not None:
                continue
            if deadline is not None and hashed + skipped and clock() >= deadline:
                resume = entry.path
                break
            sha256 = groups.get(entry.link_group) if entry.link_group else None
            if sha256 is None:
                sha256 = _hash_file(folders, entry)
            if sha256 is None:
                skipped += 1
                continue
            if entry.link_group:
                groups[entry.link_group] = sha256
            entries[index] = entry._replace(sha256=sha256)
            hashed += 1
    done = replace(manifest, entries=tuple(entries))
    return Digested(manifest=done, hashed=hashed, skipped=skipped, resume_at=resume)


def _key_of(entry: Entry) -> bytes:
    return tree_key(entry.path)


def _hash_file(folders: TreeFolders, entry: Entry) -> bytes | None:
    """The sha256 of ``entry``'s file if it is still the file the walk saw, else ``None``."""
    folder, _slash, name = entry.path.rpartition(b"/")
    try:
        folder_fd = folders.open(folder)
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if (
            not stat.S_ISREG(before.st_mode)
            or before.st_ino != entry.inode
            or before.st_size != entry.size
            or before.st_mtime_ns != entry.mtime_ns
        ):
            return None
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
            sha256 = hashlib.file_digest(file, "sha256").digest()
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        return None  # written to while it was read (ctime: even with its mtime put back)
    return sha256


class TreeFolders:
    """The open folder of the files being hashed, opened from the root one component at a
    time without following symlinks (so a symlink swapped in since the walk cannot lead
    the hashing out of the tree); manifest order keeps a folder's files together."""

    def __init__(self, root: Path | str) -> None:
        self._root = root
        self._root_fd = -1
        self._path: bytes | None = None
        self._fd = -1

    def __enter__(self) -> TreeFolders:
        try:
            self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise ManifestError(self._root, f"cannot open the tree: {err.strerror}") from None
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close_current()
        os.close(self._root_fd)

    def open(self, path: bytes) -> int:
        """The descriptor of the folder at ``path`` (``b""`` is the root); raises OSError."""
        if path == self._path:
            return self._fd
        self._close_current()
        fd = os.dup(self._root_fd)
        try:
            for name in path.split(b"/") if path else ():
                parent, fd = fd, -1
                try:
                    fd = os.open(name, _FOLDER_FLAGS, dir_fd=parent)
                finally:
                    os.close(parent)
        except OSError:
            if fd >= 0:
                os.close(fd)
            raise
        self._path, self._fd = path, fd
        return fd

    def _close_current(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._path, self._fd = None, -1
