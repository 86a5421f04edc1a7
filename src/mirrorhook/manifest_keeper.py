"""One published tree's manifests at work (docs/design.md#manifests): built after each new
marker, kept, hashed in the background, and the change between any kept one and the
current one.

The walk runs in a thread; the announcement waits for it, but at most
``manifest_timeout`` seconds: past them it goes out without a change (the walk goes on and
its manifest becomes the current one when done), and mirrors do a full sync. A walk that
met the tree changing (the next publish begun, or one under way when the publisher
started) makes a manifest that is kept but not ``settled``: no change is made from it.
Digests are computed after the announcement, a slice at a time, and the manifest saved
again when they are all in. Without the publisher's ``signing_key_file`` no manifest is built: a
change is only served signed.

A change a mirror asks for (``change_from``) is made once and kept until the next publish
(the last publish's is kept as it is made): every mirror that missed the same
publishes asks the same question at the same moment, and an answer costs reading a kept
manifest and a diff, seconds and a whole manifest's memory for a large tree. Those are
made one at a time, and a request that arrives while its answer is being made waits for
it, so that a stampede, or anyone asking for every kept marker, costs each answer once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import replace

from mirrorhook import applied_change, marker
from mirrorhook.changes import Change, diff
from mirrorhook.errors import ManifestError, MarkerError
from mirrorhook.log import TreeLog
from mirrorhook.manifest import Manifest, walk
from mirrorhook.manifest_apply import manifest_from_change
from mirrorhook.manifest_digest import digest
from mirrorhook.manifest_store import ManifestStore
from mirrorhook.publisher_config import PublisherConfig

logger = logging.getLogger(__name__)

APPLIED_PATHS = 10_000_000
"""The most paths of a noted change a hub's publisher reads (its receiver took it first)."""

DIGEST_SLICE = 2.0
"""Seconds of hashing per background step (the store is written after each)."""

CHANGES_KEPT = 16
"""Changes to the current manifest kept made, by the marker they start from."""


class ManifestKeeper:
    """The manifests of one tree, by marker value."""

    def __init__(self, tree: PublisherConfig) -> None:
        self.tree = tree
        self._store = ManifestStore(tree.state_dir / "manifests", keep=tree.keep_manifests)
        self.current: Manifest | None = None
        self._walking: asyncio.Task[Manifest] | None = None
        self._hashing: asyncio.Task[None] | None = None
        self._late: asyncio.Task[None] | None = None
        """Keeping a walk that finished after its announcement went out."""
        self._changes: OrderedDict[tuple[str, str], asyncio.Future[Change | None]] = OrderedDict()
        """The changes asked for, made or being made, by the markers they lead from and to."""
        self._reading = asyncio.Lock()
        """Held while a kept manifest is read and diffed: one in memory at a time."""
        self._log = TreeLog(logger, tree.repo)

    async def start(self) -> None:
        """Take the newest kept manifest as the one the first walk reuses digests from."""
        try:
            self.current = await asyncio.to_thread(self._store.latest)
        except ManifestError as err:
            self._log.warning("the kept manifests are unreadable, starting anew: %s", err)

    async def published(self, value: str) -> Change | None:
        """Build the manifest of marker ``value`` (within ``manifest_timeout``) and return
        the change from the previous one; ``None`` when there is none to give (the first
        publish, a walk that failed or took too long)."""
        previous = self.current
        if previous is not None and previous.marker == value:
            return None
        if self._walking is not None and not self._walking.done():
            self._log.info("a walk of the tree is still running: this publish waits for it")
        root = self.tree.root
        self._walking = asyncio.create_task(
            asyncio.to_thread(self._walk, value, previous), name=f"walk {value}"
        )
        try:
            async with asyncio.timeout(self.tree.manifest_timeout):
                manifest = await asyncio.shield(self._walking)
        except TimeoutError:
            self._log.warning(
                "the walk of %s took over %g s: marker %r announced without a change "
                "(mirrors do a full sync)",
                root,
                self.tree.manifest_timeout,
                value,
            )
            self._walking.add_done_callback(self._walked_late)
            return None
        except ManifestError as err:
            self._log.error("no manifest for marker %r: %s", value, err)
            return None
        await self._keep(manifest)
        if previous is None:
            return None
        change = await self._change(previous, manifest)
        self._remember((previous.marker, value), _done(change))
        return change

    def _walk(self, value: str, previous: Manifest | None) -> Manifest:
        """The manifest of marker ``value``: settled only if the marker still holds
        ``value`` and nothing else in the tree changed after it was written (a publish that
        began before or during the walk would be taken for part of this one)."""
        try:
            found = marker.load(self.tree.root / self.tree.marker)
        except MarkerError:
            found = None
        if (applied := self._applied(value, previous)) is not None and previous is not None:
            self._log.info(
                "the manifest of marker %r from the change the hub applied (%d paths)",
                value,
                applied.count,
            )
            manifest = manifest_from_change(
                previous, applied, self.tree.root, created=time.time(), also=self._own
            )
            return (
                manifest
                if found is not None and found.value == value
                else replace(manifest, settled=False)
            )
        manifest = walk(
            self.tree.root,
            previous,
            marker=value,
            since_ns=None if found is None else found.changed_ns,
            exempt=self._own,
        )
        if found is None or found.value != value:
            manifest = replace(manifest, settled=False)
        if not manifest.settled:
            self._log.info(
                "the tree changed while the walk of marker %r went by: no change will be "
                "made from it (mirrors at %r do a full sync)",
                value,
                value,
            )
        return manifest

    @property
    def _own(self) -> frozenset[bytes]:
        """The files a hub's receiver writes after the marker (its trace, its lastsync)."""
        return frozenset(os.fsencode(name) for name in self.tree.after_marker)

    def _applied(self, value: str, previous: Manifest | None) -> Change | None:
        """The change a hub's receiver noted it applied from ``previous`` to ``value``."""
        if self.tree.applied_change is None or previous is None or not previous.settled:
            return None
        change = applied_change.read(self.tree.applied_change, value, APPLIED_PATHS)
        return change if change is not None and change.from_marker == previous.marker else None

    async def _change(self, old: Manifest, new: Manifest) -> Change | None:
        """The change from ``old`` to ``new``; ``None`` when ``old`` is not settled."""
        if not old.settled:
            return None
        change = await asyncio.to_thread(diff, old, new)
        return replace(change, repo=self.tree.url_name)

    def _walked_late(self, task: asyncio.Task[Manifest]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        late = task.result()
        if self.current is None or self.current.created < late.created:
            self._late = asyncio.create_task(self._keep(late), name="late manifest")

    async def _keep(self, manifest: Manifest) -> None:
        self.current = manifest
        try:
            await asyncio.to_thread(self._store.save, manifest)
        except (OSError, ManifestError) as err:
            self._log.error("cannot keep the manifest of %r: %s", manifest.marker, err)
        if manifest.undigested and (self._hashing is None or self._hashing.done()):
            self._hashing = asyncio.create_task(self._hash(), name="digests")

    async def _hash(self) -> None:
        """Fill in the current manifest's digests, a slice at a time, saving it after each.

        A newer publish kept meanwhile (its ``_keep`` leaves the hashing to this task) is
        hashed next, from its start: its walk carried over the digests it could, not those
        of the slice under way."""
        resume: bytes | None = None
        last: Manifest | None = None
        """The manifest the last slice made: ``resume`` is a place in it."""
        while (manifest := self.current) is not None and manifest.undigested:
            if manifest is not last:
                resume = None
            try:
                done = await asyncio.to_thread(
                    digest, manifest, self.tree.root, budget_seconds=DIGEST_SLICE, resume_at=resume
                )
            except ManifestError as err:
                self._log.warning("hashing stopped: %s", err)
                return
            if self.current is not manifest:
                continue  # a newer publish was kept while the slice ran
            self.current = last = done.manifest
            with contextlib.suppress(OSError, ManifestError):
                await asyncio.to_thread(self._store.save, done.manifest)
            resume = done.resume_at
            if resume is None and self.current is last:
                return  # every file hashed (one that could not be read stays without)

    async def change_from(self, old: str) -> Change | None:
        """The change from marker ``old``'s kept manifest to the current one; ``None`` when
        ``old`` is not kept (the mirror does a full sync)."""
        current = self.current
        if current is None:
            return None
        if old == current.marker:
            return Change(old, old, (), (), repo=self.tree.url_name)
        key = (old, current.marker)
        known = self._changes.get(key)
        if known is not None and not _failed(known):
            self._changes.move_to_end(key)
            making = known
        elif not self._store.path_of(old).exists():  # asked for an unknown one: nothing kept
            return None
        else:
            making = asyncio.create_task(self._change_from(old, current), name=f"change {old}")
            self._remember(key, making)
        return await asyncio.shield(making)  # a request given up does not stop the others'

    async def _change_from(self, old: str, current: Manifest) -> Change | None:
        async with self._reading:
            try:
                kept = await asyncio.to_thread(self._store.load, old)
            except ManifestError as err:
                self._log.warning("the manifest of %r is unreadable: %s", old, err)
                return None
            if kept is None:
                return None
            return await self._change(kept, current)

    def _remember(self, key: tuple[str, str], making: asyncio.Future[Change | None]) -> None:
        self._changes[key] = making
        self._changes.move_to_end(key)
        while len(self._changes) > CHANGES_KEPT:
            self._changes.popitem(last=False)

    async def manifest_of(self, value: str) -> Manifest | None:
        """The manifest of marker ``value``: the current one or a kept one (``None``)."""
        current = self.current
        if current is not None and current.marker == value:
            return current
        async with self._reading:
            try:
                return await asyncio.to_thread(self._store.load, value)
            except ManifestError as err:
                self._log.warning("the manifest of %r is unreadable: %s", value, err)
                return None

    async def close(self) -> None:
        """Stop hashing and making changes (the walk in its thread ends on its own)."""
        for task in (self._hashing, self._late):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        making = list(self._changes.values())
        for change in making:
            change.cancel()
        # What ended a change's making, its askers were told.
        await asyncio.gather(*making, return_exceptions=True)


def _done(change: Change | None) -> asyncio.Future[Change | None]:
    """A future that holds ``change`` (one made at a publish, kept like those asked for)."""
    made: asyncio.Future[Change | None] = asyncio.get_running_loop().create_future()
    made.set_result(change)
    return made


def _failed(making: asyncio.Future[Change | None]) -> bool:
    """Whether the making of a change ended without one: asked again, it is made again."""
    return making.done() and (making.cancelled() or making.exception() is not None)
