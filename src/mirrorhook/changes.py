"""The change between two manifests, and its document on the wire (docs/design.md#changes).

``diff`` compares two manifests in one pass (both are in tree order) and names what a
mirror at the old marker must fetch and delete to hold the new tree: every path added or
changed, with its kind, and every path removed. ``Change.encode`` and ``decode_change``
are the ``mirror.changes`` JSON document; the decoder is the receiver's guard and refuses
the whole document for any path it could not safely hand to rsync.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import countOf, itemgetter
from typing import Any, TypeGuard

from mirrorhook import marker, message
from mirrorhook.errors import ChangeError, MarkerError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, without_cyclic_gc
from mirrorhook.manifest_format import MAX_PATH_BYTES

CHANGES_TYPE = "mirror.changes"

_SAFE = "-._~/+,=@"
"""What ``encode_path`` leaves as it is besides letters and digits (``%`` is not)."""
_CANONICAL = re.compile(r"(?:[A-Za-z0-9\-._~/+,=@]|%[0-9A-F]{2})*")
_KINDS = {kind.value: kind for kind in Kind}


@dataclass(frozen=True, slots=True)
class Change:
    """What changed between the trees of two marker values (docs/design.md#changes)."""

    from_marker: str
    to_marker: str
    changed: tuple[tuple[bytes, Kind], ...]
    """Paths added or changed, with their kind in the new tree, in tree order."""
    removed: tuple[bytes, ...]
    """Every path of the old tree that the new one lacks (below a removed folder too), in
    tree order."""
    links: tuple[tuple[bytes, ...], ...] = ()
    """Groups of ``changed`` files that are hard links of one another in the new tree:
    rsync ``-H`` links files only within one run, so a group travels together."""
    repo: str | None = None
    """The repository, as the publisher's URLs name it (``/v1/changes/NAME``): a change
    fetched from one URL must not be another repository's with the same markers."""
    from_files: int | None = None
    """How many files the old tree holds (``None``: not said): with ``removed_files``,
    what a mirror's safety valve weighs (``delete_valve.py``)."""
    removed_files: int | None = None
    """How many of ``removed`` are files."""

    @property
    def count(self) -> int:
        """How many paths the change names."""
        return len(self.changed) + len(self.removed)

    def encode(self) -> bytes:
        """The ``mirror.changes`` document (UTF-8 JSON) for the wire."""
        group_of = {path: number for number, group in enumerate(self.links, 1) for path in group}
        changed = []
        for path, kind in self.changed:
            item: list[str | int] = [encode_path(path), kind.value]
            if path in group_of:
                item.append(group_of[path])
            changed.append(item)
        document: dict[str, Any] = {"type": CHANGES_TYPE}
        if self.repo is not None:
            document["repo"] = self.repo
        document |= {
            "from": self.from_marker,
            "to": self.to_marker,
            "count": self.count,
            "changed": changed,
            "removed": [encode_path(path) for path in self.removed],
        }
        if self.from_files is not None and self.removed_files is not None:
            document |= {"from_files": self.from_files, "removed_files": self.removed_files}
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# --- the diff -------------------------------------------------------------------------------


def diff(old: Manifest, new: Manifest) -> Change:
    """The change that takes a mirror of ``old``'s tree to ``new``'s.

    An entry is changed when its kind, mode, owner or mtime differ, a file's size or
    (where both are known) digest, a symlink's target, another kind's inode (it was made
    again), or the files it is hard-linked with. Each hardlink group touched by the change
    is listed whole, as it was and as it is: rsync ``-H`` can only link files it lists.
    """
    with without_cyclic_gc():
        old_groups, new_groups = _link_groups(old.entries), _link_groups(new.entries)
        changed, removed, removed_files = _merge(old.entries, new.entries, old_groups, new_groups)
        from_files = _files(old.entries)
    if old_groups or new_groups:
        changed = _with_whole_groups(changed, old_groups, new_groups, new)
    members = {path for path, _kind in changed}
    links = tuple(group for group in new_groups.values() if members.issuperset(group))
    return Change(
        from_marker=old.marker,
        to_marker=new.marker,
        changed=tuple(changed),
        removed=tuple(removed),
        links=tuple(sorted(links, key=lambda group: tree_key(group[0]))),
        from_files=from_files,
        removed_files=removed_files,
    )


def _merge(
    before: Sequence[Entry],
    after: Sequence[Entry],
    old_groups: Mapping[int, tuple[bytes, ...]],
    new_groups: Mapping[int, tuple[bytes, ...]],
) -> tuple[list[tuple[bytes, Kind]], list[bytes], int]:
    """Walk both manifests side by side: what ``after`` added or changed, what it lost
    (and how many of those were files)."""
    changed: list[tuple[bytes, Kind]] = []
    removed: list[bytes] = []
    removed_files = 0
    i = j = 0
    while i < len(before) and j < len(after):
        old, new = before[i], after[j]
        if old is new or old == new:  # most of a tree (a walk even shares the tuples)
            i += 1
            j += 1
        elif old.path == new.path:
            if _differs(old, new) or _links_differ(old, new, old_groups, new_groups):
                changed.append((new.path, new.kind))
            i += 1
            j += 1
        elif tree_key(old.path) < tree_key(new.path):
            removed.append(old.path)
            removed_files += old.kind is Kind.FILE
            i += 1
        else:
            changed.append((new.path, new.kind))
            j += 1
    removed.extend(entry.path for entry in before[i:])
    removed_files += _files(before[i:])
    changed.extend((entry.path, entry.kind) for entry in after[j:])
    return changed, removed, removed_files


def _differs(old: Entry, new: Entry) -> bool:
    """Whether rsync ``-aH`` would see the same path differ (hard links aside)."""
    if (old.kind, old.mode, old.uid, old.gid, old.mtime_ns) != (
        new.kind,
        new.mode,
        new.uid,
        new.gid,
        new.mtime_ns,
    ):
        return True
    if new.kind is Kind.FILE:
        digests = old.sha256 is not None and new.sha256 is not None
        return old.size != new.size or (digests and old.sha256 != new.sha256)
    if new.kind is Kind.SYMLINK:
        return old.target != new.target
    return new.kind is Kind.OTHER and old.inode != new.inode


def _links_differ(
    old: Entry,
    new: Entry,
    old_groups: Mapping[int, tuple[bytes, ...]],
    new_groups: Mapping[int, tuple[bytes, ...]],
) -> bool:
    """Whether a path is hard-linked with other paths than before (numbers differ between
    manifests; the members say)."""
    was = old_groups[old.link_group] if old.link_group else None
    now = new_groups[new.link_group] if new.link_group else None
    return was != now


def _link_groups(entries: Iterable[Entry]) -> dict[int, tuple[bytes, ...]]:
    """The members of each hardlink group of a manifest, in tree order."""
    groups: dict[int, list[bytes]] = {}
    for entry in entries:
        if entry[9] is not None:  # entry.link_group, without the descriptor call
            groups.setdefault(entry[9], []).append(entry[0])
    return {number: tuple(paths) for number, paths in groups.items()}


def _files(entries: Iterable[Entry]) -> int:
    """How many of ``entries`` are files: counted in C (a generator over a million entries
    took 0.3 s of a diff's 0.9 s; this takes 0.05 s)."""
    return countOf(map(_KIND, entries), Kind.FILE)


_KIND = itemgetter(1)
"""An entry's kind, by index (``Entry.kind``)."""


def _with_whole_groups(
    changed: list[tuple[bytes, Kind]],
    old_groups: Mapping[int, tuple[bytes, ...]],
    new_groups: Mapping[int, tuple[bytes, ...]],
    present: Manifest,
) -> list[tuple[bytes, Kind]]:
    """``changed`` with every member still in the tree (``present``) of each hardlink
    group, old or new, that one of its paths belongs to."""
    extra: set[bytes] = set()
    for groups in (old_groups, new_groups):
        group_of = {path: members for members in groups.values() for path in members}
        for path, _kind in changed:
            extra.update(group_of.get(path, ()))
    extra.difference_update(path for path, _kind in changed)
    added = [(path, Kind.FILE) for path in extra if present.get(path) is not None]
    if not added:
        return changed
    return sorted(changed + added, key=lambda item: tree_key(item[0]))


# --- paths on the wire -------------------------------------------------------------------


def encode_path(path: bytes) -> str:
    """A tree path as text any JSON carries: letters, digits and ``-._~/+,=@`` as they are,
    every other byte (``%`` too) as ``%XX`` with upper-case hex."""
    return urllib.parse.quote_from_bytes(path, safe=_SAFE)


def decode_path(text: str) -> bytes:
    """The inverse of ``encode_path``; ``ChangeError`` for text it would not have made
    (so that each path has one spelling) and for a path that is not safe to hand to
    rsync (see ``check_path``)."""
    if not _CANONICAL.fullmatch(text):
        raise ChangeError(f"path {text[:80]!r} is not in the encoding of the change document")
    path = urllib.parse.unquote_to_bytes(text)
    if encode_path(path) != text:
        raise ChangeError(f"path {text[:80]!r} encodes a byte that needs no encoding")
    check_path(path)
    return path


def check_path(path: bytes) -> None:
    """Refuse (``ChangeError``) a path that is not a plain relative path inside a tree:
    empty, absolute, with an empty, ``.`` or ``..`` component, with a NUL, or too long."""
    if not path or len(path) > MAX_PATH_BYTES or b"\0" in path:
        raise ChangeError(f"path {path[:80]!r} is empty, too long or holds a NUL")
    if any(part in (b"", b".", b"..") for part in path.split(b"/")):
        raise ChangeError(f"path {path[:80]!r} is absolute or has an empty, . or .. component")


# --- the document -------------------------------------------------------------------------


def decode_change(body: bytes, max_changes: int) -> Change:
    """Parse a ``mirror.changes`` document; ``ChangeError`` saying what does not fit.

    Refused whole: anything but the document's shape, a marker value that breaks the
    marker rules, more than ``max_changes`` paths, a ``count`` that does not match, an
    unsafe or wrongly encoded path, paths out of tree order or repeated, a path both
    changed and removed, a changed path below a removed one or below a changed path that
    is no folder, a hardlink group of fewer than two files.
    """
    document = _document(body)
    count = document.get("count")
    changed_items, removed_items = document.get("changed"), document.get("removed")
    if not isinstance(changed_items, list) or not isinstance(removed_items, list):
        raise ChangeError("changed and removed must be lists")
    if not _integer(count):
        raise ChangeError("count must be an integer")
    if count != len(changed_items) + len(removed_items):
        raise ChangeError(
            f"count is {count}, but the lists name {len(changed_items)} and "
            f"{len(removed_items)} paths"
        )
    if count > max_changes:
        raise ChangeError(f"the change names {count} paths, more than max_changes {max_changes}")
    changed, links = _changed(changed_items)
    removed = tuple(_path(item) for item in removed_items)
    _check_order(path for path, _kind in changed)
    _check_order(removed)
    _check_tree(changed, removed)
    repo = document.get("repo")
    if repo is not None and not (isinstance(repo, str) and len(repo) <= message.MAX_FIELD_LENGTH):
        raise ChangeError("repo must be a string")
    from_files, removed_files = _file_counts(document, len(removed))
    return Change(
        from_marker=_marker(document, "from"),
        to_marker=_marker(document, "to"),
        changed=changed,
        removed=removed,
        links=links,
        repo=repo,
        from_files=from_files,
        removed_files=removed_files,
    )


def _file_counts(document: dict[str, Any], removed: int) -> tuple[int | None, int | None]:
    """``from_files`` and ``removed_files``, both or neither, and consistent."""
    from_files, removed_files = document.get("from_files"), document.get("removed_files")
    if from_files is None and removed_files is None:
        return None, None
    if not (_integer(from_files) and _integer(removed_files)):
        raise ChangeError("from_files and removed_files must both be integers")
    if not 0 <= removed_files <= min(from_files, removed):
        raise ChangeError(
            f"removed_files is {removed_files}: not between 0 and from_files {from_files} "
            f"or the {removed} removed paths"
        )
    return from_files, removed_files


def _document(body: bytes) -> dict[str, Any]:
    document = message.json_object(body, "the change", ChangeError)
    if document.get("type") != CHANGES_TYPE:
        raise ChangeError(f"type must be {CHANGES_TYPE!r}")
    return document


def _marker(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise ChangeError(f"{key} must be a marker value (a string)")
    try:
        checked = marker.value_of(value.encode(), key)
    except (MarkerError, UnicodeEncodeError) as err:
        raise ChangeError(f"{key} is not a marker value: {err}") from None
    if not checked or checked != value:
        raise ChangeError(f"{key} is not a marker value: empty or with surrounding space")
    return value


def _path(item: object) -> bytes:
    if not isinstance(item, str):
        raise ChangeError("a path must be a string")
    return decode_path(item)


def _changed(
    items: list[Any],
) -> tuple[tuple[tuple[bytes, Kind], ...], tuple[tuple[bytes, ...], ...]]:
    """The changed paths with their kinds, and the hardlink groups among them."""
    changed: list[tuple[bytes, Kind]] = []
    groups: dict[int, list[bytes]] = {}
    for item in items:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ChangeError("a changed entry must be [path, kind] or [path, kind, group]")
        path = _path(item[0])
        kind = _KINDS.get(item[1]) if isinstance(item[1], str) else None
        if kind is None:
            raise ChangeError(f"a changed entry's kind must be one of {sorted(_KINDS)}")
        if len(item) == 3:
            group = item[2]
            if not isinstance(group, int) or isinstance(group, bool) or group < 1:
                raise ChangeError("a hardlink group must be a positive integer")
            if kind is not Kind.FILE:
                raise ChangeError("only files are hard-linked in a change")
            groups.setdefault(group, []).append(path)
        changed.append((path, kind))
    if any(len(members) < 2 for members in groups.values()):
        raise ChangeError("a hardlink group has fewer than two files")
    return tuple(changed), tuple(tuple(members) for members in groups.values())


def _check_order(paths: Iterable[bytes]) -> None:
    previous: bytes | None = None
    for path in paths:
        key = tree_key(path)
        if previous is not None and key <= previous:
            raise ChangeError("the paths are not in tree order, or one is repeated")
        previous = key


def _check_tree(changed: Sequence[tuple[bytes, Kind]], removed: Sequence[bytes]) -> None:
    """Refuse a change no tree can have made: a path both changed and removed, or a
    changed path below a removed one or below a changed non-folder."""
    gone = set(removed)
    not_folders = {path for path, kind in changed if kind is not Kind.DIRECTORY}
    for path, _kind in changed:
        if path in gone:
            raise ChangeError(f"path {encode_path(path)!r} is both changed and removed")
        parent = path.rpartition(b"/")[0]
        while parent:
            if parent in gone or parent in not_folders:
                raise ChangeError(f"path {encode_path(path)!r} lies below a path that is no folder")
            parent = parent.rpartition(b"/")[0]


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
