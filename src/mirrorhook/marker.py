"""Marker files: reading their value and telling markers apart.

A marker's value is its content decoded as UTF-8 with surrounding whitespace removed, so
that ``20261125T1200\n`` and ``20261125T1200`` are the same publish.
"""

from __future__ import annotations

from pathlib import Path

MAX_MARKER_BYTES = 4096
"""A marker is a small token; a bigger file is read only this far."""


def value_of(data: bytes) -> str:
    """Return the marker value of a marker file's bytes."""
    return data[:MAX_MARKER_BYTES].decode("utf-8", "replace").strip()


def read(path: Path) -> str | None:
    """Return the marker value in ``path``, or ``None`` when there is no such file."""
    try:
        with path.open("rb") as file:
            return value_of(file.read(MAX_MARKER_BYTES))
    except FileNotFoundError:
        return None
