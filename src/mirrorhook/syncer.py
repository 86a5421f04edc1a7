"""The sync engine: the two-stage algorithm with its guards, and its record.

See docs/design.md#the-two-stage-sync.

Stage 1 copies the tree without the marker; stage 2 installs the marker, atomically and
only when the upstream marker did not move during stage 1. A local marker equal to V
therefore always means "at least the content of publish V". The caller holds the sync
locks (see ``lock.py``); this module does not know who triggered it or how it waits. Only
the sweep of a tree that its repository left (``sweep_left_tree``) takes the tree's lock
itself, since no sync of that repository will follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from mirrorhook import (
    applied_change,
    delete_valve,
    lock,
    marker,
    receiver_state,
    rsync,
    traces,
)
from mirrorhook.change_choice import change_for, whole_due
from mirrorhook.changes import Change
from mirrorhook.delta_transfer import transfer_change
from mirrorhook.errors import (
    LockedError,
    MarkerError,
    MarkerUnreadableError,
    RsyncError,
    SyncError,
)
from mirrorhook.leftovers import may_have_leftovers, remove_rsync_leftovers
from mirrorhook.log import TreeLog
from mirrorhook.metrics import NoMetrics, SyncMetrics
from mirrorhook.process import Completed
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import InProgress, ReceiverState, SyncResult
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.retry import Backoff, Sleep, retrying
from mirrorhook.state import iso_time, write_atomic
from mirrorhook.sync_record import Outcome, Report, record_outcome
from mirrorhook.trigger import Trigger
from mirrorhook.upstream_marker import read_upstream

if TYPE_CHECKING:
    from mirrorhook.snapshot_steps import SnapshotSteps
    from mirrorhook.snapshots import Build

logger = logging.getLogger(__name__)

MAX_ROUNDS = 3
"""Stage 1 runs at most this often in one sync when the upstream keeps publishing."""

_T = TypeVar("_T")


class Syncer:
    """Runs syncs of one tree and records each outcome in ``state_dir``."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        metrics: SyncMetrics | None = None,
    ) -> None:
        self.config = config
        self._log = TreeLog(logger, config.name)
        self.metrics = metrics or NoMetrics()
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._snapshots: SnapshotSteps | None = None
        if config.publish == "snapshot":  # the other trees' syncs never import that code
            from mirrorhook.snapshot_steps import SnapshotSteps  # noqa: PLC0415

            self._snapshots = SnapshotSteps(config, self.metrics, self._log, clock)

    def local_marker(self) -> str | None:
        """Return the marker value of the local tree, ``None`` before the first sync.

        A refused local marker (a symlink planted in the tree, say) counts as none, so the
        next sync replaces it; it is never followed. One that cannot be read at all raises
        ``MarkerUnreadableError``: no sync could fix that.
        """
        try:
            return marker.read(self.config.target / self.config.marker)
        except MarkerUnreadableError:
            raise
        except MarkerError as err:
            self._log.warning("%s; treating the mirror as never synced", err)
            return None

    async def sync(
        self,
        *,
        if_changed: bool,
        trigger: Trigger,
        lock_fds: tuple[int, ...] = (),
        allow_deletes: bool = False,
    ) -> Report:
        """Bring the local tree up to the upstream; record the outcome; re-raise failures.

        With ``if_changed``, nothing is transferred when the upstream marker equals ours.
        ``lock_fds``, the caller's sync locks, are handed to rsync (see ``lock.py``).
        ``allow_deletes`` lets this one sync past the safety valve (``delete_valve.py``).
        Every failure is raised as a ``SyncError`` (an unexpected ``OSError`` included).
        """
        started = self._clock()
        in_progress = InProgress(str(trigger), iso_time(started), os.getpid())
        # Durable: after a crash, this note is how the next sync knows to sweep the tree
        # for rsync's leftovers (and how `status` shows "interrupted"). No sync without it.
        try:
            before = await receiver_state.begin_sync(self.config, in_progress)
        except asyncio.CancelledError:
            # The note was written (see receiver_state.py): a cancelled sync's outcome
            # replaces it, as below.
            await self._finish(trigger, started, SyncResult.CANCELLED)
            raise
        except OSError as err:
            failure = SyncError(
                f"cannot note the sync in {receiver_state_path(self.config)}: {err.strerror}"
            )
            self._log.error("sync failed (%s): %s", trigger, failure)
            raise failure from None
        self._log.info("sync started (%s)", trigger)
        work = self._sync(
            trigger,
            started,
            if_changed=if_changed,
            sweep=may_have_leftovers(before),
            pass_fds=lock_fds,
            change=trigger.change,
            before=before,
            allow_deletes=allow_deletes,
        )
        report = await self._recorded(trigger, started, work)
        await self._finish(
            trigger, started, report.result, marker_value=report.marker, whole=report.whole
        )
        if self._snapshots is not None:  # measured by a sync that moved nothing
            await self._snapshots.expire(measure=report.result is SyncResult.UP_TO_DATE)
        else:  # a snapshot has them from its build
            await self._write_traces(trigger, started, report)
        if report.result is SyncResult.UP_TO_DATE:
            self._log.info("already up to date with upstream marker %r", report.marker)
        else:
            self._log.info(
                "sync finished in %.1f s: marker %r installed",
                self._clock() - started,
                report.marker,
            )
        return report

    async def needs_sync(self, *, trigger: Trigger) -> bool:
        """Return whether the upstream marker differs from ours (the cron pre-check).

        A failure to read it is recorded and raised like a failed sync, so ``status``
        shows it.
        """
        started = self._clock()
        upstream = await self._recorded(trigger, started, self._read_upstream())
        if upstream.value != self.local_marker():
            return True
        await self._finish(trigger, started, SyncResult.UP_TO_DATE, marker_value=upstream.value)
        self._log.info("already up to date with upstream marker %r", upstream.value)
        if not (self.config.trace or self.config.lastsync or self._snapshots):
            return False
        # The trace files say the tree is complete: only while no sync runs (this check
        # holds no lock; a daemon's sync may be transferring, and will write them itself).
        with contextlib.suppress(LockedError), lock.hold(self.config):
            report = Report(SyncResult.UP_TO_DATE, upstream.value, 0)
            await self._write_traces(trigger, started, report)
            if self._snapshots is not None:
                await self._snapshots.expire(measure=True)
        return False

    async def expire_snapshots(self) -> None:
        """Between syncs: remove the snapshots past their grace, and a half-built one, when
        no sync holds the tree's lock (one that does removes them itself)."""
        if self._snapshots is not None:
            with contextlib.suppress(LockedError), lock.hold(self.config):
                await self._snapshots.expire(measure=True)

    async def _write_traces(
        self, trigger: Trigger, started: float, report: Report, tree: ReceiverConfig | None = None
    ) -> None:
        """Rewrite the trace and lastsync files after a sync that left the tree complete
        (docs/design.md#trace-files), in ``tree`` (a snapshot being built) or the target;
        a failure to write them is only logged."""
        sync = traces.Sync(
            serial=report.marker or "",
            trigger=trigger,
            started=started,
            finished=self._clock(),
            received_bytes=report.received_bytes,
            rsync_seconds=report.rsync_seconds,
        )
        await traces.write(tree or self.config, sync, self._log)

    async def _recorded(self, trigger: Trigger, started: float, work: Awaitable[_T]) -> _T:
        """Await ``work``; record and log a failure or a cancellation before re-raising."""
        try:
            return await work
        except asyncio.CancelledError:
            await self._finish(trigger, started, SyncResult.CANCELLED)
            self._log.info("sync cancelled (%s); the local marker was left as it was", trigger)
            raise
        except SyncError as err:
            failure = err
        except MarkerUnreadableError as err:
            failure = SyncError(str(err))
        except OSError as err:  # disk full, permissions...: the same one-line report
            where = f" ({err.filename})" if err.filename else ""
            failure = SyncError(f"{err.strerror or err}{where}")
        await self._finish(trigger, started, SyncResult.FAILED, error=failure)
        self._log.error("sync failed (%s): %s", trigger, failure)
        raise failure

    async def _sync(
        self,
        trigger: Trigger,
        started: float,
        *,
        if_changed: bool,
        sweep: bool,
        pass_fds: tuple[int, ...],
        change: Change | None,
        before: ReceiverState,
        allow_deletes: bool,
    ) -> Report:
        config = self.config
        whole = whole_due(config, before, self._clock())
        local = self.local_marker()
        upstream = await self._read_upstream(pass_fds)
        if if_changed and upstream.value == local:
            return Report(SyncResult.UP_TO_DATE, local, 0)
        build = None
        if self._snapshots is not None:
            build = await self._snapshots.start()
        else:
            config.target.mkdir(parents=True, exist_ok=True)
        try:
            report = await self._rounds(
                upstream=upstream,
                local=local,
                whole=whole,
                pass_fds=pass_fds,
                change=change,
                before=before,
                allow_deletes=allow_deletes,
                sweep=sweep,
                build=build,
            )
        except (SyncError, OSError):  # a cancelled build is removed by the next sync
            if self._snapshots is not None and build is not None:
                await self._snapshots.abandon(build)
            raise
        if self._snapshots is not None and build is not None:
            tree = replace(config, target=build.path)
            await self._write_traces(trigger, started, report, tree)
            await self._snapshots.switch(build)
        return report

    async def _rounds(
        self,
        *,
        upstream: marker.Marker,
        local: str | None,
        whole: bool,
        pass_fds: tuple[int, ...],
        change: Change | None,
        before: ReceiverState,
        allow_deletes: bool,
        sweep: bool,
        build: Build | None,
    ) -> Report:
        """Stage 1, then stage 2 once the upstream marker held still (at most
        ``MAX_ROUNDS`` times); into ``build`` when the tree is a snapshot."""
        config = self.config
        tree = config if build is None else replace(config, target=build.path)
        if config.passes_changes:  # a hub: the tree leaves the noted change's now
            await asyncio.to_thread(applied_change.forget, config.state_dir)
        received, spent = 0, 0.0
        for round_number in range(1, MAX_ROUNDS + 1):
            self._log.info(
                "stage 1: transferring the tree for upstream marker %r (local %r)",
                upstream.value,
                local,
            )
            # Every round weighs the change to the upstream's marker of now; only the
            # first may transfer by it (later ones start from a tree partly moved on).
            weighed = await change_for(
                config, change, local=local, upstream=upstream.value, url=before.changes_url
            )
            if not allow_deletes:
                await delete_valve.weigh(config, weighed, before.held, self._clock())
            # A snapshot is built by the whole-tree transfer (into the spare, a btrfs
            # snapshot of the current tree, or an empty folder linked to it).
            by_change = weighed if round_number == 1 and not whole and build is None else None
            with self.metrics.time_stage("transfer"):
                began = time.monotonic()
                results = await self._stage_one(tree, by_change, pass_fds, build)
                spent += time.monotonic() - began
                if sweep:
                    remove_rsync_leftovers(tree.target)
                    sweep = False
            got = sum(rsync.received_bytes(result.stdout_tail) for result in results)
            received += got
            self.metrics.count_received_bytes(got)
            again = await self._read_upstream(pass_fds)
            if again.value == upstream.value:
                if by_change is not None and config.passes_changes:
                    await asyncio.to_thread(applied_change.note, config.state_dir, by_change)
                self._log.info("stage 2: installing marker %r", again.value)
                if self._snapshots is not None and build is not None:
                    await self._snapshots.check(build)
                with self.metrics.time_stage("install"):
                    write_atomic(tree.target / config.marker, again.data, mtime=again.mtime)
                whole = by_change is None
                return Report(SyncResult.SYNCED, again.value, round_number, received, spent, whole)
            self._log.info(
                "upstream marker moved from %r to %r during stage 1: transferring again",
                upstream.value,
                again.value,
            )
            upstream = again
        raise SyncError(
            f"the upstream marker kept changing during {MAX_ROUNDS} transfers; "
            "the local marker was left as it was and the next trigger will retry"
        )

    async def _stage_one(
        self,
        tree: ReceiverConfig,
        change: Change | None,
        pass_fds: tuple[int, ...],
        build: Build | None,
    ) -> list[Completed]:
        """Transfer the tree: by ``change`` when one applies (falling back to the whole tree
        should a run of it fail), else the whole tree (docs/design.md#the-delta-transfer);
        a snapshot's, linked to the current one's files."""

        def run(args: list[str]) -> Awaitable[Completed]:
            transfer = functools.partial(
                rsync.run, args, timeout=self.config.timeout, pass_fds=pass_fds
            )
            return self._retry(transfer, "rsync of the tree")

        if change is not None:
            self._log.info("stage 1 by change: %d paths", change.count)
            try:
                return await transfer_change(tree, change, run)
            except SyncError as err:
                self._log.warning("the transfer by change failed (%s): the whole tree now", err)
        return [await run(rsync.tree_args(tree, None if build is None else build.link_dest))]

    async def _read_upstream(self, pass_fds: tuple[int, ...] = ()) -> marker.Marker:
        """Fetch the upstream marker (``upstream_marker.py``), with the retry policy."""
        with self.metrics.time_stage("read_marker"):
            upstream = await read_upstream(self.config, self._retry, pass_fds)
        self.metrics.set_marker("upstream", upstream.value)
        return upstream

    async def _retry(self, operation: Callable[[], Awaitable[_T]], what: str) -> _T:
        """Run ``operation``, retrying transient failures (docs/design.md#the-retry-policy)."""
        async for attempt in retrying(
            attempts=self.config.retries,
            should_retry=lambda err: isinstance(err, RsyncError) and err.transient,
            backoff=self._backoff,
            what=what,
            sleep=self._sleep,
        ):
            with attempt:
                return await operation()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _finish(
        self,
        trigger: Trigger,
        started: float,
        result: SyncResult,
        *,
        marker_value: str | None = None,
        error: SyncError | None = None,
        whole: bool = False,
    ) -> None:
        with contextlib.suppress(MarkerError):  # the gauge only; the sync's outcome stands
            self.metrics.set_marker("local", self.local_marker())
        outcome = Outcome(trigger, started, self._clock(), result, marker_value, error, whole)
        await record_outcome(self.config, outcome, self.metrics, self._log)
