"""A config that switches a role from the single form to the host form: its state moves along.

The single form keeps its tree's state in ``state_dir`` itself, the host form each
repository's in ``state_dir/repos/NAME`` (docs/design.md#many-repositories). A host that
switches would otherwise start afresh: the receiver without its last sync, last success
and report address, the publisher without its deliveries, freshness and history. So the
commands that use the state (``serve``, ``sync``, ``notify``) first move the single form's
files into the folder of the host form's repository — when that is unambiguous: the host
form has one repository, whose folder holds none of those files yet, and nothing uses the
old ones (no sync holds the old repository lock, no daemon notes that it runs there).
Otherwise the files stay, unread, and the log and ``check-config`` say why and what to do.

Each file is hard-linked into its new folder, then unlinked from the old one, under the
lock its updates take: a crash between the two leaves both names of one file, which the
next start tidies; no file is ever copied, overwritten, or lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mirrorhook import lock, receiver_records, receiver_state, record
from mirrorhook.config import Config
from mirrorhook.daemon_note import NOTE_NAME, ConfigNote
from mirrorhook.errors import LockedError
from mirrorhook.receiver_config import ReceiverHost
from mirrorhook.state import fsync_dir, locked, pid_alive, read_json

if TYPE_CHECKING:
    from mirrorhook.publisher_config import PublisherHost

logger = logging.getLogger(__name__)

RECEIVER_FILES = (receiver_state.STATE_NAME,)


def publisher_files() -> tuple[str, ...]:
    """The publisher's files that move: imported here only, off a mirror's sync path."""
    from mirrorhook import freshness, history, repomd  # noqa: PLC0415 - the publisher's

    return (record.STATE_NAME, freshness.STATE_NAME, history.STATE_NAME, repomd.STATE_NAME)


@dataclass(frozen=True, slots=True)
class Move:
    """What the single form left in a role's ``state_dir``, and where it goes."""

    role: str
    """``receiver`` or ``publisher``."""
    source: Path
    files: tuple[str, ...]
    """The single form's files there (names in ``source``)."""
    destination: Path | None
    """The folder of the host form's one repository; ``None`` when there are several."""
    blocked: str | None
    """Why the files are not moved (``None``: they are)."""

    def describe(self, *, now: bool) -> str:
        """In words: moved (``now``) or to be moved at the next start; or why not."""
        files = ", ".join(self.files)
        if self.blocked is None:
            when = "moved" if now else "to be moved at the next start"
            return f"the single form's {files} in {self.source}: {when} into {self.destination}"
        into = self.destination or self.source / "repos" / "NAME"
        return (
            f"the single form's {files} in {self.source} stays there, unread: {self.blocked} "
            f"(to keep its history, stop mirrorhook and move it into {into})"
        )


def planned(config: Config) -> list[Move]:
    """The moves ``config`` asks for, as far as the files tell (``check-config`` shows them;
    ``move_state`` checks the locks and daemons too, when it moves)."""
    moves = []
    for role, host, names in (
        ("receiver", config.receivers, RECEIVER_FILES),
        ("publisher", config.publishers, () if config.publishers is None else publisher_files()),
    ):
        if host is not None and not host.single:
            move = _plan(role, host, names)
            if move is not None:
                moves.append(move)
    return moves


def _plan(role: str, host: ReceiverHost | PublisherHost, names: tuple[str, ...]) -> Move | None:
    source = host.state_dir
    files = tuple(name for name in names if (source / name).is_file())
    if not files:
        return None
    if len(host.repos) != 1:
        why = f"the host form has {len(host.repos)} repositories, and which one it was is not known"
        return Move(role, source, files, None, why)
    destination = host.repos[0].state_dir
    taken = [name for name in names if _taken(source / name, destination / name)]
    if taken:
        why = f"{destination} holds its own {', '.join(taken)} already"
        return Move(role, source, files, destination, why)
    return Move(role, source, files, destination, None)


def _taken(old: Path, new: Path) -> bool:
    """Whether ``new`` holds a file of its own: not ``old`` itself (a move cut short)."""
    if not new.exists():
        return False
    try:
        return not old.samefile(new)
    except FileNotFoundError:
        return True  # the old one is gone: the new one is the host form's own


def move_state(config: Config) -> None:
    """Move what the single form left to the host form's folder, where unambiguous (see
    the module); log what was moved, or why it was not."""
    for planned_move in planned(config):
        move = planned_move
        if move.blocked is None:
            try:
                with _unused(move):
                    _move(move)
            except _InUseError as err:
                move = _blocked(move, str(err))
            except OSError as err:
                move = _blocked(move, f"moving them failed: {err.strerror or err}")
        log = logger.info if move.blocked is None else logger.warning
        log("%s: %s", move.role, move.describe(now=True))


class _InUseError(Exception):
    """Another process uses the single form's files."""


def _blocked(move: Move, why: str) -> Move:
    return Move(move.role, move.source, move.files, move.destination, why)


@contextlib.contextmanager
def _unused(move: Move) -> Iterator[None]:
    """Hold what keeps others off the old files; ``_InUseError`` when one uses them."""
    note = ConfigNote.from_json(read_json(move.source / NOTE_NAME))
    pids = [] if note is None else [note.pid]
    if move.role == "receiver":  # a daemon of a version that kept no daemon.json
        recorded = read_json(move.source / receiver_state.STATE_NAME)
        daemon = receiver_records.ReceiverState.from_json(recorded).daemon
        pids += [] if daemon is None else [daemon.pid]
    for pid in pids:
        if pid != os.getpid() and pid_alive(pid):
            raise _InUseError(f"a mirrorhook serve (pid {pid}) still runs there")
    with contextlib.ExitStack() as held:
        if move.role == "receiver":
            try:
                held.enter_context(lock.hold_repository(move.source))
            except LockedError as err:
                raise _InUseError(str(err)) from None
        yield


def _move(move: Move) -> None:
    assert move.destination is not None  # noqa: S101 - a move that is not blocked has one
    move.destination.mkdir(parents=True, exist_ok=True)
    for name in move.files:
        old, new = move.source / name, move.destination / name
        # The record files that several processes update are moved under their lock.
        with locked(old) if name in _SHARED else contextlib.nullcontext():
            if not new.exists():
                os.link(old, new)
            old.unlink()
    fsync_dir(move.destination)
    fsync_dir(move.source)


_SHARED = (receiver_state.STATE_NAME, record.STATE_NAME)
