"""The change a hub's receiver applied, handed to the publisher of the same tree
(docs/design.md#a-hub-passes-the-change-on).

A sync that transferred by a change writes it to ``state_dir/applied-change.json`` just
before it installs the marker; every sync removes the file before its first transfer, so
that the file, when there, is the change that took the tree to the marker it names: a
whole transfer (which may repair more than a change names) leaves none. The publisher
reads it when it sees that marker; without it, it walks the tree.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from mirrorhook.changes import Change, decode_change
from mirrorhook.errors import PayloadError
from mirrorhook.state import write_atomic

FILE_NAME = "applied-change.json"


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def forget(state_dir: Path) -> None:
    """A transfer begins: the tree is no longer the one the noted change led to."""
    with contextlib.suppress(FileNotFoundError):
        path_in(state_dir).unlink()


def note(state_dir: Path, change: Change) -> None:
    """The tree now holds what ``change`` leads to (its marker is installed next)."""
    write_atomic(path_in(state_dir), change.encode())


def read(path: Path, to_marker: str, max_changes: int) -> Change | None:
    """The noted change to ``to_marker``; ``None`` when there is none, or another."""
    try:
        change = decode_change(path.read_bytes(), max_changes)
    except (OSError, PayloadError):
        return None
    return change if change.to_marker == to_marker else None
