"""The delta transfer's rsync side: which paths a change makes rsync list, in batches, in
NUL-separated list files, and with which flags (docs/design.md#the-delta-transfer).

The receiver runs its full transfer's own command (``rsync.tree_args``: ``-aH --delete``,
its filters, excludes and ``--max-delete``) with ``delta_rsync_args`` added, once per
batch. What rsync then does, each point tested with real rsync:

- ``--files-from`` turns on ``--relative`` and ``--dirs`` and leaves ``-r`` off: a listed
  folder is made and its times and mode set, its contents are not sent, and ``--delete``
  deletes nothing inside it. Every folder on the way to a listed path (the "implied
  directories") is sent with its attributes, so a folder whose mtime a run disturbs
  (a file written or deleted in it) gets its own back.
- ``--delete-missing-args`` makes a listed path the sender lacks a deletion, of a whole
  folder too (``--delete`` is on). So a removed folder is listed alone, not with its
  contents; and a path below one that is now a file or a symlink is not listed at all:
  the sender cannot even look it up (rsync fails with "Not a directory", exit 23), and
  listing the new file or symlink replaces the folder, contents and all.
- ``--from0``: names may hold newlines. Each is written ``./NAME``: read from a local
  file, a list entry that starts with ``#`` or ``;`` is a comment, even with ``--from0``.
- ``-H`` links files only among those of one run, so a hardlink group is never split
  between two batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mirrorhook.changes import Change
from mirrorhook.manifest import Kind, tree_key

BATCH_LIMIT = 20_000
"""The most paths one rsync run is given: one fed a list of 960,000 paths is known to
stall. A hardlink group larger than this is a batch of its own."""


def delta_rsync_args(list_file: Path) -> list[str]:
    """The arguments a delta run adds to the full transfer's command, before its ``--``:
    the list of paths (``write_list``), NUL-separated, missing ones deleted."""
    return [f"--files-from={list_file}", "--from0", "--delete-missing-args"]


def transfer_units(change: Change) -> list[tuple[bytes, ...]]:
    """The paths rsync must be given for ``change``, in tree order: each changed path,
    and each removed one that is not inside a removed folder or below a changed path
    that is no folder any more. The paths of a hardlink group form one unit, at the
    place of its first member; every other unit is one path."""
    gone = set(change.removed)
    not_folders = {path for path, kind in change.changed if kind is not Kind.DIRECTORY}
    covered = gone | not_folders
    listed: list[bytes] = [path for path, _kind in change.changed]
    listed += (path for path in change.removed if not _below(path, covered))
    listed.sort(key=tree_key)
    group_of = {path: group for group in change.links for path in group}
    units: list[tuple[bytes, ...]] = []
    for path in listed:
        group = group_of.get(path)
        if group is None:
            units.append((path,))
        elif group[0] == path:
            units.append(group)
    return units


def _below(path: bytes, folders: set[bytes]) -> bool:
    """Whether ``path`` lies below one of ``folders``."""
    parent = path.rpartition(b"/")[0]
    while parent:
        if parent in folders:
            return True
        parent = parent.rpartition(b"/")[0]
    return False


def batches(units: Sequence[tuple[bytes, ...]], limit: int = BATCH_LIMIT) -> list[list[bytes]]:
    """``units`` packed in order into runs of at most ``limit`` paths (a unit is never
    split; one larger than ``limit`` runs alone)."""
    runs: list[list[bytes]] = []
    current: list[bytes] = []
    for unit in units:
        if current and len(current) + len(unit) > limit:
            runs.append(current)
            current = []
        current.extend(unit)
    if current:
        runs.append(current)
    return runs


def write_list(path: Path, paths: Iterable[bytes], base: bytes = b"") -> None:
    """Write the ``--files-from`` list of one run: ``BASE./PATH`` each (``base`` from
    ``daemon_base``), NUL-terminated, in a file only its owner can read."""
    data = b"".join(base + b"./" + item + b"\0" for item in paths)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def daemon_base(source: str) -> tuple[str, bytes]:
    """The source a delta run names, and what its list entries start with.

    An rsync daemon (3.5.0) finds ``--files-from`` entries only below a module's root: with
    a source inside a module (``rsync://HOST/MODULE/SUB/``, ``HOST::MODULE/SUB/``) every
    entry "vanishes" (exit 24, nothing sent). So such a run names the module's root and
    writes each entry ``SUB/./PATH``: ``-R`` keeps what follows ``/./``. Other sources are
    used as they are.
    """
    if source.startswith("rsync://"):
        head, _, rest = source.removeprefix("rsync://").partition("/")
        module, _, sub = rest.partition("/")
        root = f"rsync://{head}/{module}/"
    elif "::" in source.split("/", 1)[0]:
        host, _, rest = source.partition("::")
        module, _, sub = rest.partition("/")
        root = f"{host}::{module}/"
    else:
        return source, b""
    sub = sub.strip("/")
    if not sub:
        return source, b""
    return root, os.fsencode(sub) + b"/"
