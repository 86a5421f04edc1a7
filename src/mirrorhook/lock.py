"""The sync locks: one sync per tree at a time, whatever the repository is called.

See docs/design.md#the-sync-lock.

A sync holds ``flock`` locks, taken in this order:

1. each folder above the target, from the root down, *shared*, and
2. the target itself, *exclusive* — both on files in the host's ``state_dir/locks`` named
   by a hash of the folder's real path, so they follow the tree, not the name: a reload that
   hands a tree to another repository, or a cron sync configured under another name, meets
   the same lock. The shared ones make a sync of ``/srv/a`` and one of ``/srv/a/b`` exclude
   each other, while trees side by side do not;
3. the repository's own, on ``sync.lock`` in its state folder, *exclusive*: two syncs of
   one repository (its old and its new tree, after a reload moved it) share a state file.

A holder only ever *tries* a lock: when one is taken, it lets go of those it got and tries
the whole list again later (or gives up), so no holder waits while holding one and no two
can deadlock. The kernel drops a ``flock`` when the last descriptor of it is closed, so a
crash never leaves a stale lock. The holders yield the descriptors: the sync engine hands
them to rsync, so that an rsync orphaned by a killed daemon keeps the tree locked until it
ends (a restarted daemon then waits for it instead of running a second rsync beside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from mirrorhook.errors import LockedError
from mirrorhook.receiver_config import ReceiverConfig

LOCK_NAME = "sync.lock"
POLL_INTERVAL = 1.0
"""Seconds between attempts while the daemon waits for another sync to finish."""


@dataclass(frozen=True, slots=True)
class _Lock:
    path: Path
    shared: bool
    of: str
    """What the lock guards, for the message when it is taken."""


def lock_path(state_dir: Path) -> Path:
    """Return the repository's own lock file, in its state folder ``state_dir``."""
    return state_dir / LOCK_NAME


def tree_lock_path(locks_dir: Path, folder: Path) -> Path:
    """Return the lock file of ``folder`` (a real path) among the host's tree locks."""
    return locks_dir / f"{hashlib.sha256(os.fsencode(folder)).hexdigest()[:32]}.lock"


def _locks(config: ReceiverConfig, *, tree_only: bool) -> list[_Lock]:
    """The locks a sync of ``config``'s tree takes, in the order it takes them; with
    ``tree_only``, not the repository's own."""
    # The real path: two spellings of one folder (a symlink) are one tree.
    tree = Path(os.path.realpath(config.target))
    locks = [
        _Lock(
            tree_lock_path(config.locks_dir, above),
            shared=True,
            of=f"{above}, above the tree {tree}",
        )
        for above in reversed(tree.parents)
    ]
    locks.append(_Lock(tree_lock_path(config.locks_dir, tree), shared=False, of=f"the tree {tree}"))
    if not tree_only:
        name = "the repository" if config.name is None else f"repository {config.name}"
        locks.append(_Lock(lock_path(config.state_dir), shared=False, of=name))
    return locks


@contextlib.contextmanager
def hold(config: ReceiverConfig, *, tree_only: bool = False) -> Iterator[tuple[int, ...]]:
    """Hold the sync locks of ``config``'s tree for the ``with`` block; raise
    ``LockedError`` at once if one of them is taken."""
    fds = _try_all(_locks(config, tree_only=tree_only))
    try:
        yield fds
    finally:
        _close(fds)


@contextlib.asynccontextmanager
async def hold_waiting(
    config: ReceiverConfig, *, tree_only: bool = False, poll: float = POLL_INTERVAL
) -> AsyncIterator[tuple[int, ...]]:
    """Hold the sync locks of ``config``'s tree for the block, waiting (cancellably) while
    another sync has one of them."""
    locks = _locks(config, tree_only=tree_only)
    while True:
        try:
            fds = _try_all(locks)
            break
        except LockedError:
            await asyncio.sleep(poll)
    try:
        yield fds
    finally:
        _close(fds)


@contextlib.contextmanager
def hold_repository(state_dir: Path) -> Iterator[None]:
    """Hold the repository lock in ``state_dir`` alone (``state_dir/sync.lock``), as every
    sync of its repository does; raise ``LockedError`` at once if one holds it."""
    fds = _try_all([_Lock(lock_path(state_dir), shared=False, of="the repository")])
    try:
        yield
    finally:
        _close(fds)


def check_free(config: ReceiverConfig) -> None:
    """Raise ``LockedError`` if another sync holds one of the locks of ``config``'s tree now."""
    _close(_try_all(_locks(config, tree_only=False)))


def is_locked(config: ReceiverConfig) -> bool:
    """Return whether another sync holds one of the locks of ``config``'s tree now."""
    try:
        check_free(config)
    except LockedError:
        return True
    except OSError:
        return False
    return False


def _try_all(locks: list[_Lock]) -> tuple[int, ...]:
    """Take every lock in order, or none: a taken one lets go of those already got."""
    fds: list[int] = []
    try:
        for each in locks:
            # One at a time (no extend): each one got must be let go of if a later is taken.
            fds.append(_try_lock(each))  # noqa: PERF401
    except BaseException:
        _close(fds)
        raise
    return tuple(fds)


def _try_lock(lock: _Lock) -> int:
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if lock.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(f"{lock.path} (of {lock.of})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close(fds: tuple[int, ...] | list[int]) -> None:
    for fd in fds:
        os.close(fd)
