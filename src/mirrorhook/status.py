"""The receiver's status: one JSON document for ``GET /v1/status`` and ``mirrorhook status``."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from mirrorhook import lock, marker
from mirrorhook.config import ReceiverConfig, redact_upstream
from mirrorhook.poller import Poller
from mirrorhook.scheduler import Phase, Scheduler
from mirrorhook.state import read_json
from mirrorhook.syncer import Result, state_path


def receiver_status(
    config: ReceiverConfig, *, scheduler: Scheduler | None = None, poller: Poller | None = None
) -> dict[str, Any]:
    """Return the receiver's state; live fields come from a running daemon when given."""
    recorded = read_json(state_path(config))
    in_progress = recorded.get("in_progress")
    if scheduler is not None:
        state = str(scheduler.phase)
        starts_at = scheduler.starts_at
    else:
        state = str(Phase.SYNCING) if lock.is_locked(config.state_dir) else str(Phase.IDLE)
        starts_at = None
        if (
            state == Phase.IDLE
            and isinstance(in_progress, dict)
            and not _alive(in_progress.get("pid"))
        ):
            state = "interrupted"  # the process that was syncing died; the next sync repairs it
    return {
        "role": "receiver",
        "upstream": redact_upstream(config.upstream),
        "target": str(config.target),
        "marker_file": config.marker,
        "local_marker": marker.read(config.target / config.marker),
        "state": state,
        "sync_starts_at": _iso(starts_at),
        "next_poll": _iso(poller.next_at) if poller is not None else None,
        "last_sync": recorded.get("last_sync"),
        "last_success": recorded.get("last_success"),
    }


def is_failing(status: dict[str, Any]) -> bool:
    """Return whether the last sync failed (``mirrorhook status`` then exits 1)."""
    last = status.get("last_sync")
    return isinstance(last, dict) and last.get("result") == Result.FAILED


def format_status(status: dict[str, Any]) -> str:
    """Return the status as aligned ``key: value`` lines for a terminal."""
    last = status.get("last_sync") or {}
    rows = [
        ("upstream", status["upstream"]),
        ("target", status["target"]),
        ("local marker", status["local_marker"] or "(none: never synced)"),
        ("state", status["state"]),
        ("last sync", _describe(last) if last else "(never)"),
        ("last success", status.get("last_success") or "(never)"),
    ]
    if status.get("next_poll"):
        rows.append(("next poll", status["next_poll"]))
    if last.get("error"):
        rows.append(("error", last["error"]))
    rows.extend(("rsync said", line) for line in last.get("stderr_tail", [])[-5:])
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in rows)


def _describe(last: dict[str, Any]) -> str:
    return (
        f"{last.get('result')} ({last.get('trigger')}), started {last.get('started')}, "
        f"took {last.get('duration')} s"
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
