"""The receiver's state file, ``receiver.json``: its one owner (docs/design.md#state-files).

One file per tree, in its ``state_dir``, shared by ``serve`` and ``mirrorhook sync`` and read
by ``status``: the sync running now (``in_progress``), the last one's outcome
(``last_sync``, ``last_success``), the daemon's live note (``daemon``), the last
``exec_on_*`` command's outcome (``last_hook``) and where to send reports (``report``).
Only this module reads or writes it; the others hand it and get back the typed values
below. The JSON keeps the names and shapes it always had; a value of the wrong shape
(edited by hand, say) reads as absent, and keys this version does not know are kept.

Each write changes its own keys in a read-modify-write under the file's lock, so that
processes never lose each other's updates, and runs in a thread: it may wait for another
process's lock and it fsyncs, neither of which may stall the event loop. A write that has
begun is finished before a cancellation goes on (the thread would go on anyway), so that
what the cancelled caller writes next lands after it. Kept free of aiohttp so that
``mirrorhook status`` starts fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import (
    DaemonNote,
    Held,
    HookNote,
    InProgress,
    LastSync,
    ReceiverState,
    ReportTo,
)
from mirrorhook.state import read_json, update_json

STATE_NAME = "receiver.json"

_T = TypeVar("_T")


def receiver_state_path(config: ReceiverConfig) -> Path:
    """Return the file that keeps a tree's syncs, notes and report address across restarts."""
    return config.state_dir / STATE_NAME


def _as_json(
    entry: InProgress | LastSync | DaemonNote | HookNote | ReportTo | Held,
) -> dict[str, Any]:
    if isinstance(entry, LastSync):
        return entry.as_json()
    return dataclasses.asdict(entry)


def read(config: ReceiverConfig) -> ReceiverState:
    """Return the tree's recorded state (all ``None`` before the first sync)."""
    return ReceiverState.from_json(read_json(receiver_state_path(config)))


async def begin_sync(config: ReceiverConfig, note: InProgress) -> ReceiverState:
    """Note a sync before its first rsync, durably; return the state as it was before."""
    return await _update(config, {"in_progress": _as_json(note)})


async def end_sync(
    config: ReceiverConfig,
    last: LastSync,
    *,
    success_at: str | None,
    whole_at: str | None = None,
) -> None:
    """Record a sync's outcome and drop its in-progress note, durably; ``success_at`` is
    the time of a sync that left the tree complete (``None`` for one that did not),
    ``whole_at`` that of one that did so by transferring the whole tree. A sync that left
    the tree complete ends a hold of the safety valve."""
    changes: dict[str, Any] = {"in_progress": None, "last_sync": _as_json(last)}
    if success_at is not None:
        changes["last_success"] = success_at
        changes["held"] = None
    if whole_at is not None:
        changes["last_whole"] = whole_at
    await _update(config, changes)


async def note_hook(config: ReceiverConfig, note: HookNote) -> None:
    """Record how the last ``exec_on_*`` command ended."""
    await _update(config, {"last_hook": _as_json(note)})


async def remember_report(config: ReceiverConfig, report: ReportTo) -> None:
    """Remember where to report, across restarts."""
    await _update(config, {"report": _as_json(report)})


async def hold(config: ReceiverConfig, held: Held) -> None:
    """Note that the safety valve holds syncs back (until a sync completes)."""
    await _update(config, {"held": _as_json(held)})


async def remember_changes(config: ReceiverConfig, url: str) -> None:
    """Remember where the publisher serves changes, across restarts."""
    await _update(config, {"changes_url": url})


async def forget_daemon(config: ReceiverConfig) -> None:
    """Note that no daemon serves the tree any more (``serve`` stopped it)."""
    await _update(config, {"daemon": None})


class DaemonNotes:
    """The daemon's live note of one tree, for ``status``: ``note`` never waits; the newest
    note is written in the background, one write at a time, not fsynced (it is redone at
    the next change). ``on_written`` hears how each write went (``None``: it worked)."""

    def __init__(
        self, config: ReceiverConfig, on_written: Callable[[OSError | None], None]
    ) -> None:
        self._config = config
        self._on_written = on_written
        self._pending: DaemonNote | None = None
        self._writer: asyncio.Task[None] | None = None

    def note(self, note: DaemonNote) -> None:
        """Have ``note`` written soon, replacing any note not yet written."""
        self._pending = note
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending())

    async def flush(self) -> None:
        """Return once every note made so far is written (or failed)."""
        while (writer := self._writer) is not None:
            await asyncio.wait([writer])

    async def _write_pending(self) -> None:
        try:
            while (note := self._pending) is not None:
                self._pending = None
                try:
                    await _update(self._config, {"daemon": _as_json(note)}, durable=False)
                except OSError as err:
                    self._on_written(err)
                else:
                    self._on_written(None)
        finally:
            self._writer = None


async def _update(
    config: ReceiverConfig, changes: dict[str, Any], *, durable: bool = True
) -> ReceiverState:
    """Apply ``changes`` to the file in a thread; return the state as it was before."""
    write = asyncio.ensure_future(
        asyncio.to_thread(_update_now, receiver_state_path(config), changes, durable=durable)
    )
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])  # see the module: finish the write, then cancel
        raise


def _update_now(path: Path, changes: dict[str, Any], *, durable: bool) -> ReceiverState:
    before: dict[str, Any] = {}

    def change(document: dict[str, Any]) -> None:
        before.update(document)
        document.update(changes)

    update_json(path, change, durable=durable)
    return ReceiverState.from_json(before)
