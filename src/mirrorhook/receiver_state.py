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
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.state import iso_time, read_json, text_or_none, update_json

STATE_NAME = "receiver.json"

_T = TypeVar("_T")


def receiver_state_path(config: ReceiverConfig) -> Path:
    """Return the file that keeps a tree's syncs, notes and report address across restarts."""
    return config.state_dir / STATE_NAME


class _WrongShapeError(Exception):
    """A recorded value is not what this module writes there."""


def _field(
    raw: dict[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    value = raw.get(key)
    if value is None and optional:
        return None
    # bool is an int to isinstance; JSON's true is never a pid or a duration.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _WrongShapeError(key)
    return value


class SyncResult(enum.StrEnum):
    """How a sync ended."""

    SYNCED = "synced"
    UP_TO_DATE = "up-to-date"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class InProgress:
    """A sync running now, noted durably before its first rsync; a crash leaves it behind."""

    trigger: str
    started: str
    """RFC 3339 (``state.iso_time``), as every time in the file."""
    pid: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        return cls(
            _field(raw, "trigger", str), _field(raw, "started", str), _field(raw, "pid", int)
        )


@dataclass(frozen=True, slots=True)
class LastSync:
    """How the last sync ended; on failure why, and rsync's exit code and last lines."""

    trigger: str
    started: str
    finished: str
    duration: float
    """Seconds, rounded to milliseconds."""
    result: str
    """A ``syncer.SyncResult`` value."""
    marker: str | None
    """The marker value the sync left in the tree (validated by ``marker.py``)."""
    error: str | None = None
    returncode: int | None = None
    stderr_tail: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        tail = _field(raw, "stderr_tail", list, optional=True)
        if tail is not None and not all(isinstance(line, str) for line in tail):
            raise _WrongShapeError("stderr_tail")
        return cls(
            trigger=_field(raw, "trigger", str),
            started=_field(raw, "started", str),
            finished=_field(raw, "finished", str),
            duration=_field(raw, "duration", (int, float)),
            result=_field(raw, "result", str),
            marker=_field(raw, "marker", str, optional=True),
            error=_field(raw, "error", str, optional=True),
            returncode=_field(raw, "returncode", int, optional=True),
            stderr_tail=None if tail is None else tuple(tail),
        )

    def as_json(self) -> dict[str, Any]:
        """The record as written and as ``status --json`` shows it: the three failure
        fields only when set, the keys in the file's (sorted) order."""
        document: dict[str, Any] = {
            "trigger": self.trigger,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "result": self.result,
            "marker": self.marker,
        }
        failure = {
            "error": self.error,
            "returncode": self.returncode,
            "stderr_tail": None if self.stderr_tail is None else list(self.stderr_tail),
        }
        document |= {key: value for key, value in failure.items() if value is not None}
        return dict(sorted(document.items()))


@dataclass(frozen=True, slots=True)
class SubscriptionNote:
    """What one subscription of the tree has seen (docs/design.md#subscriptions)."""

    url: str
    connected_since: str | None
    last_announcement: str | None
    announcements: int
    reconnects: int
    last_error: str | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        return cls(
            url=_field(raw, "url", str),
            connected_since=_field(raw, "connected_since", str, optional=True),
            last_announcement=_field(raw, "last_announcement", str, optional=True),
            announcements=_field(raw, "announcements", int),
            reconnects=_field(raw, "reconnects", int),
            last_error=_field(raw, "last_error", str, optional=True),
        )


@dataclass(frozen=True, slots=True)
class DaemonNote:
    """What a running ``serve`` does with the tree, rewritten at every change."""

    pid: int
    phase: str
    """A ``scheduler.Phase`` value."""
    sync_starts_at: str | None
    next_poll: str | None
    subscriptions: tuple[SubscriptionNote, ...] = ()

    @classmethod
    def now(
        cls,
        *,
        phase: str,
        starts_at: float | None,
        next_poll: float | None,
        subscriptions: tuple[SubscriptionNote, ...] = (),
    ) -> Self:
        """This process's note: ``phase``, when the waiting sync and the next poll start,
        and what its subscriptions have seen."""
        return cls(
            pid=os.getpid(),
            phase=phase,
            sync_starts_at=None if starts_at is None else iso_time(starts_at),
            next_poll=None if next_poll is None else iso_time(next_poll),
            subscriptions=subscriptions,
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        listed = raw.get("subscriptions") or []
        if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
            raise _WrongShapeError("subscriptions")
        return cls(
            pid=_field(raw, "pid", int),
            phase=_field(raw, "phase", str),
            sync_starts_at=_field(raw, "sync_starts_at", str, optional=True),
            next_poll=_field(raw, "next_poll", str, optional=True),
            subscriptions=tuple(SubscriptionNote.from_json(item) for item in listed),
        )


@dataclass(frozen=True, slots=True)
class HookNote:
    """How the last ``exec_on_success`` or ``exec_on_failure`` command ended."""

    command: str
    """``exec_on_success`` or ``exec_on_failure``."""
    outcome: str
    """In a few words: ``ok``, ``exit status 3``, ``stopped after 300 s``..."""
    at: str

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        return cls(_field(raw, "command", str), _field(raw, "outcome", str), _field(raw, "at", str))


@dataclass(frozen=True, slots=True)
class ReportTo:
    """Where the upstream asked for reports, and this mirror's name there (``reporter.py``)."""

    url: str
    mirror: str
    repo: str | None = None
    """The repository's name at the upstream (the webhook's ``data.repo``), which the
    report names: it may differ from this mirror's own name for it, or be the only name
    when this mirror has the single form."""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        return cls(
            _field(raw, "url", str),
            _field(raw, "mirror", str),
            _field(raw, "repo", str, optional=True),
        )


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """Everything ``receiver.json`` holds; a missing or wrongly shaped entry is ``None``."""

    in_progress: InProgress | None = None
    last_sync: LastSync | None = None
    last_success: str | None = None
    daemon: DaemonNote | None = None
    last_hook: HookNote | None = None
    report: ReportTo | None = None
    last_whole: str | None = None
    """When a sync last completed by transferring the whole tree (not a change)."""
    changes_url: str | None = None
    """Where the publisher serves changes, as the last verified announcement said."""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Self:
        return cls(
            in_progress=_entry(InProgress.from_json, document.get("in_progress")),
            last_sync=_entry(LastSync.from_json, document.get("last_sync")),
            last_success=text_or_none(document.get("last_success")),
            daemon=_entry(DaemonNote.from_json, document.get("daemon")),
            last_hook=_entry(HookNote.from_json, document.get("last_hook")),
            report=_entry(ReportTo.from_json, document.get("report")),
            last_whole=text_or_none(document.get("last_whole")),
            changes_url=text_or_none(document.get("changes_url")),
        )


def _entry(parse: Callable[[dict[str, Any]], _T], raw: object) -> _T | None:
    if not isinstance(raw, dict):
        return None
    try:
        return parse(raw)
    except _WrongShapeError:
        return None


def _as_json(entry: InProgress | LastSync | DaemonNote | HookNote | ReportTo) -> dict[str, Any]:
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
    ``whole_at`` that of one that did so by transferring the whole tree."""
    changes: dict[str, Any] = {"in_progress": None, "last_sync": _as_json(last)}
    if success_at is not None:
        changes["last_success"] = success_at
    if whole_at is not None:
        changes["last_whole"] = whole_at
    await _update(config, changes)


async def note_hook(config: ReceiverConfig, note: HookNote) -> None:
    """Record how the last ``exec_on_*`` command ended."""
    await _update(config, {"last_hook": _as_json(note)})


async def remember_report(config: ReceiverConfig, report: ReportTo) -> None:
    """Remember where to report, across restarts."""
    await _update(config, {"report": _as_json(report)})


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
