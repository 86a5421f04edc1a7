"""The per-tree sync lock: an exclusive ``flock`` on ``state_dir/sync.lock``.

See docs/design.md#the-sync-lock.

The daemon and ``mirrorhook sync`` take the same lock, so only one rsync ever writes a tree.
The kernel drops a ``flock`` when the last descriptor of it is closed, so a crash never
leaves a stale lock. The holders yield that descriptor: the sync engine hands it to rsync,
so that an rsync orphaned by a killed daemon keeps the tree locked until it ends (a
restarted daemon then waits for it instead of running a second rsync beside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from mirrorhook.errors import LockedError

LOCK_NAME = "sync.lock"
POLL_INTERVAL = 1.0
"""Seconds between attempts while the daemon waits for a one-shot sync to finish."""


def lock_path(state_dir: Path) -> Path:
    """Return the lock file of the tree whose state lives in ``state_dir``."""
    return state_dir / LOCK_NAME


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[int]:
    """Hold the sync lock for the ``with`` block; raise ``LockedError`` at once if it is taken."""
    fd = _try_lock(lock_path(state_dir))
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def hold_waiting(state_dir: Path, poll: float = POLL_INTERVAL) -> AsyncIterator[int]:
    """Hold the sync lock for the block, waiting (cancellably) while another process has it."""
    path = lock_path(state_dir)
    while True:
        try:
            fd = _try_lock(path)
            break
        except LockedError:
            await asyncio.sleep(poll)
    try:
        yield fd
    finally:
        os.close(fd)


def is_locked(state_dir: Path) -> bool:
    """Return whether some process holds the sync lock right now."""
    try:
        fd = _try_lock(lock_path(state_dir))
    except LockedError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def _try_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(str(path)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd
