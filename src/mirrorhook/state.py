"""Durable state files: JSON written atomically (temp file, fsync, rename, fsync the folder)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def iso_time(timestamp: float) -> str:
    """Return a Unix time as RFC 3339 in UTC with milliseconds, as state files keep times."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    mtime: float | None = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old or the new file.

    ``durable`` adds the fsyncs that make the new file survive a power cut; without them
    a crash may bring back the old content (fine for notes that are redone anyway).
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            if durable:
                os.fsync(file.fileno())
        if mtime is not None:
            os.utime(temp, (mtime, mtime))
        Path(temp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(temp).unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(
    path: Path, document: dict[str, Any], *, durable: bool = True, compact: bool = False
) -> None:
    """Write ``document`` as indented JSON (one line if ``compact``: Python encodes that
    several times faster, for large records), atomically, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if compact:
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    else:
        text = json.dumps(document, indent=2, sort_keys=True)
    write_atomic(path, (text + "\n").encode(), durable=durable)


def update_json(
    path: Path, change: Callable[[dict[str, Any]], None], *, durable: bool = True
) -> dict[str, Any]:
    """Read, ``change`` and rewrite ``path`` under an exclusive lock on ``path.lock``.

    Processes that share a state file (``serve`` and ``notify``, say) thus never lose each
    other's updates. Returns the document as written.
    """
    with locked(path):
        document = read_json(path)
        change(document)
        write_json(path, document, durable=durable)
        return document


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``path.lock`` that every update of ``path`` holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def text_or_none(value: object) -> str | None:
    """A string read from a state file, or ``None`` when it holds something else."""
    return value if isinstance(value, str) else None


def read_json(path: Path) -> dict[str, Any]:
    """Return the JSON object in ``path``, or ``{}`` when it does not exist or is unreadable."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def fsync_dir(folder: Path) -> None:
    """Make the names in ``folder`` durable (a rename, a link, an unlink in it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: object) -> bool:
    """Whether the process a state file names by ``pid`` still runs (one of another user,
    which this one may not signal, does)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
