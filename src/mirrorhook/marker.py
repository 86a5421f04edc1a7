"""Marker files: reading them safely and telling their values apart.

A marker's value is its content decoded as UTF-8 with surrounding whitespace removed, so
that ``20261125T1200\n`` and ``20261125T1200`` are the same publish.

Whoever can write the published root (or a mirror's tree) may be less trusted than the
``mirrorhook`` user, which can read every mirror's secret; the marker's value is sent to
every mirror and shown in status and logs. So a marker is read only when it is a regular
file of at most ``MAX_FILE_BYTES`` holding one line of printable UTF-8 text of at most
``MAX_VALUE_BYTES``. It is opened without following a symlink and without waiting for a
writer (a FIFO would block the event loop), and a refused marker's content is never
repeated in an error message: it may be a secret.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from mirrorhook.errors import MarkerError, MarkerUnreadableError

MAX_FILE_BYTES = 4096
"""A marker is a small token: a bigger file is refused (and not read beyond this)."""
MAX_VALUE_BYTES = 1024
"""The longest marker value, in bytes of UTF-8."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Characters that make one log line look like two, hide text or reorder it: controls
# (C0, DEL, C1), formatting characters (bidi overrides, zero-width) and line separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Marker:
    """A marker file that passed the rules: its value, its bytes, its mtime and its ctime."""

    value: str
    data: bytes
    mtime: float
    changed_ns: int
    """When the file was last written or renamed into place (``st_ctime_ns``): unlike the
    mtime, no tool can set it, so it says when the publish that wrote the marker ended."""


def value_of(data: bytes, path: Path | str) -> str:
    """Return the marker value of a marker file's bytes; ``MarkerError`` names what is wrong.

    An empty or blank file has the empty value (callers treat it as "no marker yet").
    """
    if len(data) > MAX_FILE_BYTES:
        raise MarkerError(path, f"it is larger than {MAX_FILE_BYTES} bytes")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MarkerError(path, "it is not valid UTF-8 text") from None
    if "\n" in value:
        raise MarkerError(path, "it holds more than one line")
    for char in value:
        if unicodedata.category(char) in _UNPRINTABLE:
            # The code point alone says which character, without repeating the content.
            raise MarkerError(path, f"it contains a non-printable character (U+{ord(char):04X})")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise MarkerError(path, f"its value is longer than {MAX_VALUE_BYTES} bytes")
    return value


def load(path: Path) -> Marker | None:
    """Return the marker file at ``path``, or ``None`` when there is no such file.

    Raises ``MarkerError`` when it is a symlink, not a regular file, or its content breaks
    the rules of ``value_of``; ``MarkerUnreadableError`` (a kind of ``MarkerError``) when
    it cannot be opened or read for another reason. Never blocks on a FIFO.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise MarkerError(path, "it is a symbolic link (not followed)") from None
        if err.errno == errno.ENXIO:  # what open() says of a unix socket
            raise MarkerError(path, f"cannot open it: {err.strerror}") from None
        raise MarkerUnreadableError(path, f"cannot open it: {err.strerror}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise MarkerError(path, f"it is not a regular file but {_kind(status.st_mode)}")
        data = _read_bounded(fd)
    except OSError as err:
        raise MarkerUnreadableError(path, f"cannot read it: {err.strerror}") from None
    finally:
        os.close(fd)
    return Marker(value_of(data, path), data, status.st_mtime, status.st_ctime_ns)


def read(path: Path) -> str | None:
    """Return the marker value in ``path``, or ``None`` when there is no such file.

    Raises ``MarkerError`` as ``load`` does.
    """
    found = load(path)
    return None if found is None else found.value


def _read_bounded(fd: int) -> bytes:
    """Read to the end of the file, but never more than one byte past ``MAX_FILE_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFDIR: "a directory",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }
    return kinds.get(stat.S_IFMT(mode), "a special file")
