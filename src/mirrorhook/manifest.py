"""Manifests: what a tree holds, entry by entry, as ``rsync -aH`` sees it
(docs/design.md#manifests).

A manifest lists every entry below a tree's root (the root itself is not one) with the
facts rsync's quick check and ``-aH`` compare: kind, size, mtime, mode, owner, symlink
target and hardlink group, and for files a sha256. ``walk`` builds one quickly, reusing the
previous manifest's digest of every file whose path, size, mtime and inode are unchanged;
``digest`` (in ``manifest_digest.py``) hashes the rest afterwards, so a publisher can
announce a publish as soon as the walk is done.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import gc
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mirrorhook.errors import ManifestError


class Kind(enum.StrEnum):
    """What an entry is. ``OTHER`` is a FIFO, a socket or a device: ``rsync -a`` implies
    ``-D`` and copies them (devices only as root), so a manifest records them too."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


# A NamedTuple rather than the house's frozen, slotted dataclass: a walk makes a million of
# these in about two seconds, and a tuple is built in one C call (a frozen dataclass's
# __init__ takes an object.__setattr__ per field, about four times as long); two entries
# also compare in C, which keeps a diff of two million entries a linear pass.
class Entry(NamedTuple):
    """One entry of a tree (docs/design.md#manifests)."""

    path: bytes
    """Relative to the root, ``/``-separated; any bytes but NUL (no ``.`` or ``..``)."""
    kind: Kind
    size: int
    """In bytes (files, symlinks); 0 for directories and other kinds."""
    mtime_ns: int
    mode: int
    """The permission bits, ``st_mode & 0o7777``."""
    uid: int
    gid: int
    inode: int
    """Only for reusing digests: a file replaced by another has another inode."""
    target: bytes | None = None
    """A symlink's target; ``None`` for other kinds."""
    link_group: int | None = None
    """Files that are hard links of one another in the tree share a number (1, 2, ...,
    in path order of their first member); ``None`` for a file with no other link in it."""
    sha256: bytes | None = None
    """A file's digest; ``None`` for other kinds and for files not hashed yet."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A tree's entries in tree order (see ``tree_key``), and the marker value they
    belong to."""

    marker: str
    created: float
    """When the walk began (Unix time)."""
    entries: tuple[Entry, ...]
    settled: bool = True
    """Whether the walk met the tree as the marker's publish left it: no entry it recorded,
    and no folder it listed, had changed since (``walk``'s ``since_ns``). A change from a
    manifest that is not settled could miss what changed under the walk, so none is made
    from it (docs/design.md#a-manifest-of-a-tree-at-rest)."""

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, path: bytes) -> Entry | None:
        """The entry at ``path``, or ``None``."""
        index = bisect.bisect_left(self.entries, tree_key(path), key=_tree_key_of)
        if index < len(self.entries) and self.entries[index].path == path:
            return self.entries[index]
        return None

    @property
    def undigested(self) -> int:
        """How many files have no digest yet (docs/design.md#manifests)."""
        return sum(1 for entry in self.entries if entry.kind is Kind.FILE and not entry.sha256)


def tree_key(path: bytes) -> bytes:
    """The key that sorts paths in tree order: by component, each in byte order (the byte
    order of the path with ``/`` taken as the lowest byte, which no name contains).

    It is the order a depth-first walk meets entries in when it lists each folder in name
    order, so a walk needs no sort, and a folder's entries follow it at once.
    """
    return path.replace(b"/", b"\0")


def _tree_key_of(entry: Entry) -> bytes:
    return tree_key(entry.path)


_FILE_TYPE = 0o170000
"""The file-type bits of ``st_mode`` (what ``stat.S_IFMT`` keeps, without a call per entry)."""
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (FileNotFoundError, NotADirectoryError)
"""What an entry that was removed or replaced while the walk went by raises."""


def walk(
    root: Path | str,
    previous: Manifest | None = None,
    *,
    marker: str,
    since_ns: int | None = None,
    exempt: frozenset[bytes] = frozenset(),
    clock: Callable[[], float] = time.time,
) -> Manifest:
    """Return the manifest of the tree below ``root``, for the marker value ``marker``.

    Files get the digest ``previous`` had for them when their path, size, mtime and inode
    are unchanged, and no digest otherwise. Folders are opened one below the other without
    following symlinks, so a symlink swapped in while the walk runs cannot lead it out of
    the tree; an entry removed meanwhile is left out. Raises ``ManifestError`` when a
    folder or an entry cannot be read (a manifest missing part of the tree would make
    mirrors delete it).

    The manifest is ``settled`` unless an entry or a listed folder changed (its ctime)
    after ``since_ns`` (by default, the start of the walk): the paths in ``exempt``, and
    their folders, do not count (a hub's own trace files, written after the marker).
    """
    created = clock()
    since = int(created * 1e9) if since_ns is None else since_ns
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ManifestError(root, f"cannot open the tree: {err.strerror}") from None
    linked: dict[bytes, tuple[int, int]] = {}
    late: list[bytes] = []
    try:
        with without_cyclic_gc():
            before = previous.entries if previous else ()
            entries = _walk_tree(root, root_fd, before, Seen(linked, since, late))
            if linked:
                _number_link_groups(entries, linked)
            manifest = Manifest(
                marker=marker,
                created=created,
                entries=tuple(entries),
                settled=_settled(late, exempt),
            )
    finally:
        os.close(root_fd)
    return manifest


class Seen(NamedTuple):
    """What a walk notes on its way, besides the entries."""

    linked: dict[bytes, tuple[int, int]]
    """The hard-linked files' paths, with their device and inode."""
    since: int
    """The ctime (ns) past which an entry or a folder changed under the walk."""
    late: list[bytes]
    """The paths that did (a folder's with a trailing ``/``; the root's is ``/``)."""


def _settled(late: list[bytes], exempt: frozenset[bytes]) -> bool:
    """Whether every path that changed under the walk is exempt, or an exempt one's folder
    (as an entry, ``a/b``, or as listed, ``a/b/``)."""
    parents = {path.rpartition(b"/")[0] for path in exempt}
    allowed = exempt | parents | {parent + b"/" for parent in parents}
    return all(path in allowed for path in late)


def _walk_tree(  # noqa: PLR0912 - the hot loop, in one frame: a call per entry costs
    root: Path | str,
    root_fd: int,
    before: tuple[Entry, ...],
    seen: Seen,
) -> list[Entry]:
    """Every entry below ``root_fd``, in tree order: depth first, without recursion (the
    stack holds the folders being listed, each with its open descriptor), each folder in
    name order; what ``seen`` notes along the way.

    ``before`` (the previous manifest, in the same order) is followed with a cursor
    rather than looked up by path: a million lookups in a dict of a million entries miss
    the processor's caches each time and cost more than the walk's own work.
    """
    entries: list[Entry] = []
    append = entries.append
    new = tuple.__new__
    file, directory = Kind.FILE, Kind.DIRECTORY
    cursor, count = 0, len(before)
    stack = [(iter(_folder(root, root_fd, b"", seen)), root_fd)]
    try:
        while stack:
            listing, fd = stack[-1]
            for entry in listing:
                # Indexes, not names, on this path taken a million times: 0 is the path,
                # 1 the kind, 2 the size, 3 the mtime, 7 the inode, 10 the digest.
                path = entry[0]
                while cursor < count:
                    old = before[cursor]
                    if old[0] == path:
                        cursor += 1
                        if old[:10] == entry[:10]:
                            entry = old  # noqa: PLW2901 - the same facts: its digest too
                        elif (
                            old[10] is not None
                            and entry[1] is file
                            and old[3] == entry[3]
                            and old[2] == entry[2]
                            and old[7] == entry[7]
                        ):
                            entry = new(Entry, (*entry[:10], old[10]))  # noqa: PLW2901
                        break
                    if tree_key(path) < tree_key(old[0]):
                        break  # a new path: the previous manifest's entry comes later
                    cursor += 1  # a path that is gone
                append(entry)
                if entry[1] is directory:
                    child = _open_folder(root, fd, path)
                    if child is not None:
                        stack.append((iter(_folder(root, child, path + b"/", seen)), child))
                        break
            else:
                stack.pop()
                if fd != root_fd:
                    os.close(fd)
    finally:
        for _listing, fd in stack:
            if fd != root_fd:
                os.close(fd)
    return entries


def _open_folder(root: Path | str, parent_fd: int, path: bytes) -> int | None:
    """Open the folder at ``path`` through its parent's descriptor, not following a
    symlink; ``None`` when it is gone or is no folder any more."""
    try:
        return os.open(path.rpartition(b"/")[2], _FOLDER_FLAGS, dir_fd=parent_fd)
    except _GONE:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # replaced by a symlink since it was listed
            return None
        raise ManifestError(root, f"cannot open {path!r}: {err.strerror}") from None


def _folder(
    root: Path | str,
    fd: int,
    prefix: bytes,
    seen: Seen,
) -> list[Entry]:
    """The entries of the open folder ``fd`` (whose paths start with ``prefix``), in name
    order. This is the walk's hot loop: one ``lstat`` and one tuple per entry.

    The folder's ctime is read after it is listed: a name removed or added before the
    listing changed it then (its entry, from the parent's listing, is older)."""
    rows: list[Entry] = []
    append = rows.append
    lstat = os.lstat
    new = tuple.__new__
    file_type, regular, folder, symlink = _FILE_TYPE, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
    file = Kind.FILE
    linked, since, late = seen
    names = _names(root, fd, prefix)
    if os.fstat(fd).st_ctime_ns > since:
        late.append(prefix or b"/")
    for name in names:
        try:
            st = lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ManifestError(root, f"cannot stat {prefix + name!r}: {err.strerror}") from None
        path = prefix + name
        if st.st_ctime_ns > since:
            late.append(path)
        mode = st.st_mode
        what = mode & file_type
        if what == regular:
            if st.st_nlink > 1:
                linked[path] = (st.st_dev, st.st_ino)
            append(
                new(
                    Entry,
                    (
                        path,
                        file,
                        st.st_size,
                        st.st_mtime_ns,
                        mode & 0o7777,
                        st.st_uid,
                        st.st_gid,
                        st.st_ino,
                        None,
                        None,
                        None,
                    ),
                )
            )
            continue
        target = None
        if what == folder:
            kind, size = Kind.DIRECTORY, 0
        elif what == symlink:
            kind, size = Kind.SYMLINK, st.st_size
            try:
                target = os.readlink(name, dir_fd=fd)
            except OSError as err:
                if isinstance(err, FileNotFoundError) or err.errno == errno.EINVAL:
                    continue  # removed, or replaced by something else, since the lstat
                raise ManifestError(root, f"cannot read {path!r}: {err.strerror}") from None
        else:
            kind, size = Kind.OTHER, 0
        facts = (path, kind, size, st.st_mtime_ns, mode & 0o7777, st.st_uid, st.st_gid)
        append(new(Entry, (*facts, st.st_ino, target, None, None)))
    return rows


def _names(root: Path | str, fd: int, prefix: bytes) -> list[bytes]:
    """The names in the open folder ``fd``, as bytes, sorted.

    Listing ``/proc/self/fd/N`` lists the very folder the descriptor holds and returns
    bytes; ``os.listdir(fd)`` returns text that would have to be encoded back, name by
    name (a quarter of a second for a million names): it serves where /proc is missing.
    """
    try:
        try:
            names = os.listdir(b"/proc/self/fd/%d" % fd)  # noqa: PTH208 - bytes names, fast
        except FileNotFoundError:
            names = [os.fsencode(name) for name in os.listdir(fd)]
    except OSError as err:
        folder = prefix.rstrip(b"/") or b"."
        raise ManifestError(root, f"cannot list {folder!r}: {err.strerror}") from None
    names.sort()
    return names


def _number_link_groups(entries: list[Entry], linked: dict[bytes, tuple[int, int]]) -> None:
    """Give the files that share an inode within the tree a group number, in path order;
    a file whose other links are all outside the tree gets none (rsync sees no link)."""
    members: dict[tuple[int, int], int] = {}
    for key in linked.values():
        members[key] = members.get(key, 0) + 1
    numbers: dict[tuple[int, int], int] = {}
    for index, entry in enumerate(entries):
        inode = linked.get(entry.path)
        if inode is None or members[inode] == 1:
            continue
        number = numbers.setdefault(inode, len(numbers) + 1)
        entries[index] = entry._replace(link_group=number)


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a walk or a reader makes a million
    entries.

    Every 700 new objects start a collection of the young ones, and each collection of
    the oldest walks every object alive: with the collector on, a 1M-file walk takes about
    twice as long. Tuples of bytes and ints make no cycles, so nothing is left for it.
    The collector is process-wide: other threads go without it for those seconds too.
    The new entries are still the youngest objects when it is back, so its next
    collection looks at each once (about 0.2 s for a million: ``Entry`` is a tuple
    subclass, which the collector tracks for good, as it would a dataclass).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
