"""btrfs subvolumes for snapshots, where the tree lives on btrfs (docs/design.md#snapshots).

A snapshot of a subvolume is made at once, whatever the tree's size, and shares every
extent with it until one side writes: the next tree then starts as a copy of the current
one that rsync brings up to date in place. Detected, never required: without btrfs, or
without the ``btrfs`` command (Debian's btrfs-progs), snapshots are hard-linked trees.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

FIRST_SUBVOLUME_INODE = 256
"""The inode number of a subvolume's root folder (``BTRFS_FIRST_FREE_OBJECTID``)."""
TIMEOUT = 600.0
"""Seconds a ``btrfs subvolume`` command may take (a delete of a large one returns at once
and frees its space in the background)."""


def usable(folder: Path) -> bool:
    """Whether ``folder`` is on btrfs and the ``btrfs`` command is installed."""
    return shutil.which("btrfs") is not None and file_system(folder) == "btrfs"


def file_system(path: Path) -> str | None:
    """The type of the file system ``path`` lies on, from ``/proc/self/mountinfo``."""
    where = os.path.realpath(path)
    best, kind = "", None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        mount = _unescape(fields[4])
        fs_type = fields[fields.index("-") + 1]
        inside = where == mount or where.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fs_type
    return kind


def is_subvolume(path: Path) -> bool:
    """Whether ``path`` is the root folder of a btrfs subvolume (not through a symlink)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return st.st_ino == FIRST_SUBVOLUME_INODE and file_system(path) == "btrfs"


def create(path: Path) -> None:
    """Make ``path`` an empty subvolume."""
    _run("create", str(path))


def snapshot(source: Path, path: Path) -> None:
    """Make ``path`` a writable snapshot of the subvolume ``source``."""
    _run("snapshot", str(source), str(path))


def delete(path: Path) -> None:
    """Delete the subvolume ``path`` (its space is freed in the background)."""
    _run("delete", str(path))


def _run(*args: str) -> None:
    done = subprocess.run(  # noqa: S603 - an argument list, paths of our own, no shell
        ["btrfs", "subvolume", *args],  # noqa: S607 - btrfs-progs, found on PATH
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"btrfs subvolume {args[0]} {args[-1]} failed: {said}")


def _unescape(text: str) -> str:
    """A mount point as mountinfo writes it: space, tab, newline and backslash octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text
