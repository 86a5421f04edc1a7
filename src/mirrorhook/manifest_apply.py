"""A hub's manifest of the publish it just applied, made from the change instead of a walk
of its tree (docs/design.md#a-hub-passes-the-change-on).

A hub's receiver that synced by a change notes it (``applied_change.py``); its publisher,
seeing the new marker, takes its previous manifest, drops what the change removed, and
``lstat``s what it changed and every folder on the way to a changed or removed path (the
folders whose mtimes the transfer moved): the cost follows the change, not the tree. The
entries it does not touch keep their facts and digests; the new files are hashed in the
background as after a walk. Hard-link groups are numbered again in path order, as a walk
numbers them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mirrorhook.changes import Change
from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, without_cyclic_gc
from mirrorhook.manifest_digest import TreeFolders

_KINDS = {stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIRECTORY, stat.S_IFLNK: Kind.SYMLINK}

Inode = tuple[int, int]


def manifest_from_change(
    previous: Manifest,
    change: Change,
    root: Path | str,
    *,
    created: float,
    also: frozenset[bytes] = frozenset(),
) -> Manifest:
    """The manifest of ``change.to_marker``'s tree at ``root``, from ``previous`` (the
    manifest of ``change.from_marker``) and the entries ``change`` touched; the paths in
    ``also`` (the hub's own trace files, which no change names) are looked at too."""
    touched = {path for path, _kind in change.changed} | also
    for path in (*touched, *change.removed):
        touched.update(_folders_on_the_way(path))
    gone = set(change.removed)
    found: list[tuple[Entry, Inode | None]] = []
    with without_cyclic_gc(), TreeFolders(root) as folders:
        for path in sorted(touched, key=tree_key):
            looked = _entry_at(root, folders, path)
            if looked is not None:
                found.append(looked)
        drop = touched | gone
        kept = [entry for entry in previous.entries if entry[0] not in drop]
        entries = _numbered(_merged(kept, found))
    return Manifest(change.to_marker, created, tuple(entries), settled=previous.settled)


def _folders_on_the_way(path: bytes) -> list[bytes]:
    parts = path.split(b"/")[:-1]
    return [b"/".join(parts[: index + 1]) for index in range(len(parts))]


def _entry_at(
    root: Path | str, folders: TreeFolders, path: bytes
) -> tuple[Entry, Inode | None] | None:
    """The entry at ``path`` and, for a file with other links, its inode; ``None`` when
    nothing is there (the change's path was not transferred: a filter left it out)."""
    folder, _slash, name = path.rpartition(b"/")
    try:
        fd = folders.open(folder)
        st = os.lstat(name, dir_fd=fd)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), Kind.OTHER)
        target = os.readlink(name, dir_fd=fd) if kind is Kind.SYMLINK else None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink on the way: nothing of the tree is there
            return None
        raise ManifestError(root, f"cannot stat {path!r}: {err.strerror}") from None
    size = st.st_size if kind in (Kind.FILE, Kind.SYMLINK) else 0
    facts = (path, kind, size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    entry = Entry(*facts, st.st_ino, target, None, None)
    linked = kind is Kind.FILE and st.st_nlink > 1
    return entry, (st.st_dev, st.st_ino) if linked else None


def _merged(
    kept: list[Entry], found: list[tuple[Entry, Inode | None]]
) -> list[tuple[Entry, object]]:
    """Both lists (each in tree order) as one, each entry with what says its hard-link
    group: the previous number for a kept entry, the inode for a new one."""
    merged: list[tuple[Entry, object]] = []
    i = 0
    for entry, inode in found:
        key = tree_key(entry.path)
        while i < len(kept) and tree_key(kept[i].path) < key:
            old = kept[i]
            merged.append((old, None if old.link_group is None else ("kept", old.link_group)))
            i += 1
        merged.append((entry._replace(link_group=None), inode))
    merged.extend(
        (old, None if old.link_group is None else ("kept", old.link_group)) for old in kept[i:]
    )
    return merged


def _numbered(merged: list[tuple[Entry, object]]) -> list[Entry]:
    """The entries with their hard-link groups numbered 1, 2, ... in path order of their
    first member; a file whose other links are all outside the tree gets none."""
    sizes: dict[object, int] = {}
    for _entry, group in merged:
        if group is not None:
            sizes[group] = sizes.get(group, 0) + 1
    numbers: dict[object, int] = {}
    entries = []
    for entry, group in merged:
        if group is None or sizes[group] == 1:
            entries.append(entry if entry.link_group is None else entry._replace(link_group=None))
            continue
        number = numbers.setdefault(group, len(numbers) + 1)
        entries.append(entry if entry.link_group == number else entry._replace(link_group=number))
    return entries
