"""What a new snapshot leaves out of the current one, counted against ``max_delete``
(docs/design.md#snapshots): a build into an empty folder deletes nothing rsync's
``--max-delete`` could count."""

from __future__ import annotations

import os

from mirrorhook.errors import SyncError
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.snapshots import Build


def check(config: ReceiverConfig, build: Build) -> None:
    """Raise ``SyncError`` when the built snapshot leaves out more of the current one's
    entries than ``max_delete`` (what ``--max-delete`` counts in place: a build into an
    empty folder deletes nothing rsync could count). Nothing to count without a
    ``link_dest``: there is no current tree, or the build started from a tree rsync
    updated in place (the spare, a btrfs snapshot), where ``--max-delete`` counted."""
    if build.link_dest is None:
        return
    own = {os.fsencode(name) for name in config.own_files}
    count = _left_out(os.fsencode(build.link_dest), os.fsencode(build.path), own)
    if count > config.max_delete:
        raise SyncError(
            f"the new snapshot leaves out {count} entries of the current one, more than "
            f"max_delete ({config.max_delete}); the current snapshot stays (raise max_delete "
            "for a publish that removes more)"
        )


def _left_out(old: bytes, new: bytes, skip: set[bytes]) -> int:
    """How many entries below ``old`` have no entry of the same path below ``new``; each
    folder is listed once on each side (names and kinds, no stat), one level at a time."""
    count = 0
    pending = [(old, new, skip)]
    while pending:
        here, there, ignored = pending.pop()
        theirs = _kinds(there)
        for name, is_folder in _kinds(here).items():
            if name in ignored:
                continue
            if name not in theirs:
                count += 1 + (_entries_below(here + b"/" + name) if is_folder else 0)
            elif is_folder and theirs[name]:
                pending.append((here + b"/" + name, there + b"/" + name, set()))
    return count


def _kinds(folder: bytes) -> dict[bytes, bool]:
    """The names in ``folder`` with whether each is a folder; empty when it is none."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry.is_dir(follow_symlinks=False) for entry in entries}
    except (NotADirectoryError, FileNotFoundError):
        return {}


def _entries_below(folder: bytes) -> int:
    return sum(len(files) + len(folders) for _, folders, files in os.walk(folder))
