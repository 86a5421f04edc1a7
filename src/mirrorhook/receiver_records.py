"""The typed entries of a tree's ``receiver.json`` (docs/design.md#state-files): what each
sync, the daemon, the hooks, the reporter and the safety valve note, and ``ReceiverState``,
all of them as read back. ``receiver_state.py`` reads and writes the file; a value of the
wrong shape (edited by hand, say) reads as absent.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from mirrorhook.state import iso_time, text_or_none

_T = TypeVar("_T")


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
class Held:
    """A publish the safety valve refused (``delete_valve.py``): every sync is held back
    until one whose change passes, or ``mirrorhook sync --allow-deletes``, completes."""

    marker: str
    """The upstream marker whose publish was refused."""
    reason: str
    since: str
    """When it was first refused (RFC 3339)."""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        return cls(
            _field(raw, "marker", str), _field(raw, "reason", str), _field(raw, "since", str)
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
    held: Held | None = None

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
            held=_entry(Held.from_json, document.get("held")),
        )


def _entry(parse: Callable[[dict[str, Any]], _T], raw: object) -> _T | None:
    if not isinstance(raw, dict):
        return None
    try:
        return parse(raw)
    except _WrongShapeError:
        return None
