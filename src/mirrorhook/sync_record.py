"""The record of one sync: its ``Report`` to the caller, and its outcome in
``receiver.json`` and the metrics (docs/design.md#state-files)."""

from __future__ import annotations

from dataclasses import dataclass

from mirrorhook import receiver_state
from mirrorhook.errors import RsyncError, SyncError
from mirrorhook.log import TreeLog
from mirrorhook.metrics import SyncMetrics
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import LastSync, SyncResult
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.state import iso_time
from mirrorhook.trigger import Trigger


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one completed sync."""

    result: SyncResult
    marker: str | None
    rounds: int
    received_bytes: int = 0
    """What the tree transfers received, from rsync's ``--stats``."""
    rsync_seconds: float = 0.0
    """Wall time of the tree transfers, retries included."""
    whole: bool = False
    """Whether the last round transferred the whole tree (not a change)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one sync ended, to be recorded."""

    trigger: Trigger
    started: float
    finished: float
    result: SyncResult
    marker: str | None = None
    error: SyncError | None = None
    whole: bool = False
    """Whether it transferred the whole tree (``last_whole``)."""


async def record_outcome(
    config: ReceiverConfig, outcome: Outcome, metrics: SyncMetrics, log: TreeLog
) -> None:
    """Count the sync in ``metrics`` and note it in ``receiver.json``; a note that cannot
    be written is only logged (the tree and its marker are what they are)."""
    error = outcome.error
    rsync_error = error if isinstance(error, RsyncError) else None
    started, finished = outcome.started, outcome.finished
    last = LastSync(
        trigger=str(outcome.trigger),
        started=iso_time(started),
        finished=iso_time(finished),
        duration=round(finished - started, 3),
        result=str(outcome.result),
        marker=outcome.marker,
        error=None if error is None else str(error),
        returncode=None if rsync_error is None else rsync_error.returncode,
        stderr_tail=None if rsync_error is None else rsync_error.stderr_tail,
    )
    succeeded = outcome.result in (SyncResult.SYNCED, SyncResult.UP_TO_DATE)
    metrics.sync_finished(str(outcome.result), success_at=finished if succeeded else None)
    try:
        success_at = iso_time(finished) if succeeded else None
        whole_at = success_at if outcome.whole else None
        await receiver_state.end_sync(config, last, success_at=success_at, whole_at=whole_at)
    except OSError as err:
        log.error(
            "cannot record the sync's outcome (%s) in %s: %s",
            outcome.result,
            receiver_state_path(config),
            err.strerror,
        )
