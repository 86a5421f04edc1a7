"""The sync engine's steps for a tree published as snapshots (docs/design.md#snapshots):
start a build, check it, switch to it or abandon it, and expire the old snapshots, each
off the event loop (they walk and rename folders).

``Syncer`` makes one only for a tree with ``publish = "snapshot"``: the syncs of every
other tree (a mirror's cron sync among them, which pays for each import at every start)
never import the snapshot code.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from mirrorhook import left_out, snapshots
from mirrorhook.log import TreeLog
from mirrorhook.metrics import SyncMetrics
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.snapshots import Build


class SnapshotSteps:
    """The snapshot steps of one tree's syncs."""

    def __init__(
        self,
        config: ReceiverConfig,
        metrics: SyncMetrics,
        log: TreeLog,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._log = log
        self._clock = clock

    async def start(self) -> Build:
        """A new build to transfer into (``snapshots.prepare``: the spare, a btrfs
        snapshot of the current tree, or an empty folder linked to it)."""
        build = await asyncio.to_thread(snapshots.prepare, self._config, self._clock())
        self._log.info("building snapshot %s (%s)", build.name, build.how)
        return build

    async def check(self, build: Build) -> None:
        """Refuse a build that left out more than ``max_delete`` of the tree's names
        (``left_out.py``), before its marker is installed."""
        await asyncio.to_thread(left_out.check, self._config, build)

    async def switch(self, build: Build) -> None:
        """Serve ``build``: the current tree becomes the previous one."""
        await asyncio.to_thread(snapshots.switch, self._config, build, self._clock())
        self._metrics.snapshot_switched()
        self._log.info("switched to snapshot %s", build.name)

    async def abandon(self, build: Build) -> None:
        """Remove a build whose sync failed."""
        await asyncio.to_thread(snapshots.remove_build, build)

    async def expire(self, *, measure: bool) -> None:
        """Remove the half-built snapshots and those past their grace (the caller holds the
        tree's lock); with ``measure``, between syncs, measure the disk of those not yet
        measured (a walk each: not on a sync's way). A failure is only logged: the tree
        serves as it is."""
        config = self._config
        try:
            now = self._clock()
            await asyncio.to_thread(snapshots.remove_unused, config, now, measure=measure)
            self._metrics.kept_bytes(functools.partial(snapshots.kept_disk, config))
        except OSError as err:
            self._log.error("cannot remove the snapshots past their grace: %s", err)
