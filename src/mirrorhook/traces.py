"""Trace files for the mirror checkers: Debian's ftpsync trace and Arch's ``lastsync``.

See docs/design.md#trace-files. After each sync that ends with the tree complete (a new
marker installed, or the upstream marker found equal to ours), a receiver repository with
``trace`` and/or ``lastsync`` gets them rewritten, atomically, after the marker. They are
notes for others to read: a failure to write one is logged, and the sync stays good. They
are written through folder descriptors (``write_in_tree``), so that nothing in the tree
can redirect them.

The trace has the fields of ftpsync's ``tracefile_content`` (ftpsync 20180513, in
``/usr/bin/ftpsync`` of Debian's ``ftpsync`` package) that mean something here, in its
order and formats; the fields about ftpsync itself (its version, the architectures, the
stage-1 and stage-2 times) are left out. Nothing in it comes from a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import mirrorhook
from mirrorhook import rsync
from mirrorhook.addresses import upstream_host
from mirrorhook.log import TreeLog
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.trigger import Trigger

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Sync:
    """A sync that completed, as the trace files tell it."""

    serial: str
    """The marker value now in the tree."""
    trigger: Trigger
    started: float
    finished: float
    received_bytes: int = 0
    """What the tree transfers received (rsync's ``--stats``); 0 when none ran."""
    rsync_seconds: float = 0.0
    """Wall time of the tree transfers (retries included); 0 when none ran."""


def date_u(moment: float) -> str:
    """Return ``moment`` as ``date -u`` prints it in the POSIX locale:
    ``Wed Nov 25 19:02:55 UTC 2026`` (the day of the month padded with a space)."""
    t = datetime.fromtimestamp(moment, UTC)
    return f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S} UTC {t.year}"


def rfc2822(moment: float) -> str:
    """Return ``moment`` as ``date -u -R`` prints it: ``Wed, 25 Nov 2026 19:02:55 +0000``."""
    t = datetime.fromtimestamp(moment, UTC)  # email.utils would cost the cron sync ~10 ms
    return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year} {t:%H:%M:%S} +0000"


def transport(upstream: str) -> str:
    """The ``Rsync-Transport:`` value: ``rsync`` (a daemon), ``ssh`` or ``local``."""
    if rsync.is_daemon(upstream):
        return "rsync"
    return "local" if upstream.startswith("/") else "ssh"


def trace_text(sync: Sync, *, upstream: str, host: str, version: str) -> str:
    """The trace file for ``sync`` from ``upstream``, written on ``host``."""
    # ftpsync counts whole seconds and whole bytes per second.
    rate = int(sync.received_bytes / sync.rsync_seconds) if sync.rsync_seconds > 0 else 0
    lines = [
        date_u(sync.finished),
        f"Date: {rfc2822(sync.finished)}",
        f"Date-Started: {rfc2822(sync.started)}",
        f"Archive serial: {sync.serial}",
        f"Creator: mirrorhook {version}",
        f"Running on host: {host}",
        f"Trigger: {sync.trigger.via}",
        f"Upstream-mirror: {upstream_host(upstream) or 'unknown'}",
        f"Rsync-Transport: {transport(upstream)}",
        f"Total bytes received in rsync: {sync.received_bytes}",
        f"Total time spent in rsync: {round(sync.rsync_seconds)}",
        f"Average rate: {rate} B/s",
    ]
    return "\n".join(lines) + "\n"


def lastsync_text(sync: Sync) -> str:
    """Arch's ``lastsync``: the Unix time of the completed sync, in whole seconds."""
    return f"{int(sync.finished)}\n"


@functools.cache
def _identity() -> tuple[str, str]:
    """This host's fully qualified name and mirrorhook's version; once per process: the
    name may take a DNS lookup."""
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415 - when first needed

    try:
        version = mirrorhook.__version__
    except PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown"
    return fqdn(), version


def fqdn() -> str:
    """This host's name as ``hostname -f`` (which ftpsync uses) finds it: the canonical
    name of the host name. Not ``socket.getfqdn()``: it says ``localhost`` wherever
    /etc/hosts lists the host name on a line that starts with ``localhost``."""
    name = socket.gethostname()
    try:
        found = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):  # UnicodeError: a label IDNA refuses (over 63 bytes)
        return name
    return next((entry[3] for entry in found if entry[3]), name)


async def write(config: ReceiverConfig, sync: Sync, log: TreeLog) -> None:
    """Write the repository's trace and lastsync files, those it has; log a failure."""
    files: list[tuple[str, str, str]] = []
    if config.trace is not None:
        host, version = await asyncio.to_thread(_identity)
        text = trace_text(sync, upstream=config.upstream, host=host, version=version)
        files.append(("trace", config.trace, text))
    if config.lastsync is not None:
        files.append(("lastsync", config.lastsync, lastsync_text(sync)))
    for what, name, text in files:
        try:  # in a thread: it fsyncs
            await asyncio.to_thread(write_in_tree, config.target, name, text.encode())
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            log.error(
                "cannot write the %s file %s: %s%s; the sync itself succeeded",
                what,
                config.target / name,
                err.strerror or err,
                where,
            )


def write_in_tree(target: Path, name: str, data: bytes) -> None:
    """Write ``data`` atomically and durably as ``target/name``, creating its folders; never
    through a symbolic link in the tree, never outside it, and no temporary file left.

    A link from the upstream could point anywhere, and a local user who can write the tree
    could swap a folder on the way for a link between a check of a path and a write to it;
    so no path is looked up twice: each folder is opened in the one before it (``dir_fd``)
    without following a link, and the temporary file is created, fsynced and renamed in the
    last one (docs/design.md#trace-files). ``target`` itself is the operator's (set in the
    config, outside what the tree's writers can change) and is followed as rsync follows
    it.
    """
    *folders, leaf = PurePosixPath(name).parts
    with contextlib.ExitStack() as descriptors:
        folder = os.open(target, _FOLDER_FLAGS)
        descriptors.callback(os.close, folder)
        where = target
        for part in folders:
            where /= part
            with _named(where):
                folder = _open_folder(folder, part)
            descriptors.callback(os.close, folder)
        with _named(where / leaf):
            _replace(folder, leaf, data)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_NAMES = 100
"""Names tried for a temporary file before giving up (others may be planted in the tree)."""


@contextlib.contextmanager
def _named(where: Path) -> Iterator[None]:
    """Name ``where`` in an ``OSError`` from within: a call relative to a folder's
    descriptor names only the last part, or the temporary file."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(where)) from None


def _open_folder(parent: int, part: str) -> int:
    """Open (after creating it if need be) the folder ``part`` in ``parent``, never a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, dir_fd=parent)
    try:
        return os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except NotADirectoryError:  # what Linux says of a link opened with O_NOFOLLOW too
        mode = os.stat(part, dir_fd=parent, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a folder on the way is a symbolic link") from None
        raise


def _replace(folder: int, leaf: str, data: bytes) -> None:
    """Replace ``leaf`` in ``folder`` with ``data``: a new temporary file there, fsynced,
    renamed over it (a link at ``leaf`` is replaced, never followed), the folder fsynced."""
    temp, fd = _create_temporary(folder, leaf)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, leaf, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=folder)
        raise
    os.fsync(folder)


def _create_temporary(folder: int, leaf: str) -> tuple[str, int]:
    """A new file in ``folder`` beside ``leaf`` (``O_EXCL``: never one planted there)."""
    for _ in range(_TEMP_NAMES):
        temp = f".{leaf}.{secrets.token_hex(4)}.tmp"
        with contextlib.suppress(FileExistsError):
            return temp, os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=folder)
    raise OSError(errno.EEXIST, "no free name for a temporary file")
