"""The trees a publisher announces, at work: started, stopped, and swapped on reload.

Each published tree runs its watcher and its publisher (delivery workers and record), all
through the daemon's one courier, so ``concurrency`` bounds the whole host. A reload
(``SIGHUP``) leaves unchanged trees alone — their retries go on — stops removed ones, and
starts new and changed ones, which read their marker at once and announce it to the
mirrors that do not have it yet (docs/design.md#many-repositories).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from mirrorhook.broadcast import Broadcast
from mirrorhook.checker import Checker
from mirrorhook.config import Config
from mirrorhook.delivery import Courier
from mirrorhook.freshness import Freshness
from mirrorhook.log import counted
from mirrorhook.manifest_keeper import ManifestKeeper
from mirrorhook.metrics import Metrics
from mirrorhook.publisher import Publisher
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.repomd import RepomdVersions
from mirrorhook.reports import ReportDesk
from mirrorhook.supervisor import Supervisor
from mirrorhook.watcher import MarkerWatcher

logger = logging.getLogger(__name__)

RESTART_KEYS = ("listen", "name", "state_dir", "concurrency", "timeout", "retry_for")
"""Host-level keys that a reload does not change: they take effect at the next restart."""


class Announcers:
    """Every tree of a ``[publisher]`` section and its running watcher and publisher."""

    def __init__(
        self,
        host: PublisherHost,
        courier: Courier,
        metrics: Metrics,
        supervisor: Supervisor,
        desk: ReportDesk | None = None,
        *,
        broadcast: Broadcast | None = None,
    ) -> None:
        self.host = host
        self._desk = desk
        self._broadcast = broadcast or Broadcast(None, ())
        self._courier = courier
        self._metrics = metrics
        self._supervisor = supervisor
        self._tasks: dict[str | None, asyncio.Task[None]] = {}
        self._reloading = asyncio.Lock()

    def start(self) -> None:
        """Start every tree (its state folder is made first: a failure there is fatal)."""
        for tree in self.host.repos:
            self._start(tree)

    async def stop(self) -> None:
        """Stop every tree, as at shutdown."""
        await asyncio.gather(*(self._stop(name) for name in list(self._tasks)))

    async def reload(self, config: Config) -> None:
        """Apply ``config``'s ``[publisher]`` section to the running trees."""
        async with self._reloading:
            new = config.publishers
            if new is None or new.single != self.host.single:
                logger.error(
                    "reload: %s: adding or removing [publisher], or switching between one "
                    "tree and [publisher.repos], needs a restart; the running config stays",
                    config.path,
                )
                return
            for key in RESTART_KEYS:
                if getattr(new, key) != getattr(self.host, key):
                    logger.warning(
                        "reload: publisher.%s changed: takes effect at the next restart", key
                    )
            running = {tree.repo: tree for tree in self.host.repos}
            for name in running.keys() - {tree.repo for tree in new.repos}:
                await self._stop(name)
                self._metrics.tree(name).forget_publisher()
                logger.info("reload: published repository %s removed", name)
            kept = []
            for tree in new.repos:
                old = running.get(tree.repo)
                if old is not None and _settings(old) == _settings(tree):
                    kept.append(old)  # the running one, with the host settings it started with
                    continue
                if old is not None:
                    await self._stop(tree.repo)
                    self._metrics.tree(tree.repo).keep_mirrors({m.name for m in tree.mirrors})
                    logger.info("reload: published repository %s changed: restarting", tree.repo)
                else:
                    logger.info("reload: published repository %s added", tree.repo)
                started = _with_host_settings(tree, self.host)
                self._start(started)
                kept.append(started)
            # The new section's own keys (public_url, for the page's links), with the host
            # settings that only a restart changes.
            self.host = _with_running_host(new, self.host, repos=tuple(kept))
            if self._desk is not None:
                self._desk.publishers = self.host  # the page, mirror list and reports follow

    def _start(self, tree: PublisherConfig) -> None:
        tree.state_dir.mkdir(parents=True, exist_ok=True)
        self._tasks[tree.repo] = asyncio.create_task(self._run(tree))

    async def _stop(self, name: str | None) -> None:
        task = self._tasks.pop(name, None)
        if self._desk is not None:
            # Reports no longer reach the tree; its checker ends the checks they asked for.
            self._desk.checkers.pop(name, None)
            self._desk.records.pop(name, None)
            self._desk.repomds.pop(name, None)
        if task is not None:
            task.cancel("publisher shutting down")
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, tree: PublisherConfig) -> None:
        metrics = self._metrics.tree(tree.repo)
        publisher = Publisher(tree, self._courier, metrics=metrics, supervisor=self._supervisor)
        checker = Checker(
            Freshness(tree, metrics=metrics),
            self._courier.session,
            public=self._courier.public_session,
        )
        repomds = RepomdVersions(tree.root, tree.state_dir, window=tree.stale_after)
        if self._desk is not None:
            self._desk.checkers[tree.repo] = checker  # reports reach this tree's checker
            self._desk.records[tree.repo] = publisher.record  # the page shows its deliveries
            self._desk.repomds[tree.repo] = repomds  # and its Metalinks these

        # With the signing key, each publish's manifest is built before it is announced,
        # so the announcement can carry the change (docs/design.md#manifests).
        keeper = ManifestKeeper(tree) if self.host.signing_key is not None else None
        if self._desk is not None and keeper is not None:
            self._desk.manifests[tree.repo] = keeper  # /v1/changes and /v1/manifest read it
        newest = Newest()

        async def announcing() -> None:
            if keeper is not None:
                await keeper.start()
            while True:
                value = await newest.take()
                changes = None if keeper is None else await keeper.published(value)
                message = publisher.publish(value, changes)
                if message is not None:
                    self._broadcast.announce(tree.repo, message)
                checker.published(value)
                repomds.published()

        watcher = MarkerWatcher(
            tree.root,
            tree.marker,
            newest.put,
            polling=tree.watch == "poll",
            rescan=tree.rescan,
        )
        logger.info(
            "publisher ready: announcing %s to %s%s",
            tree.root / tree.marker,
            counted(len(tree.mirrors), "mirror"),
            "" if tree.repo is None else f" (repository {tree.repo})",
        )
        prefix = "" if tree.repo is None else f"{tree.repo} "
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._supervisor.keep(f"{prefix}announcing", announcing))
                group.create_task(publisher.run(), name=f"{prefix}publisher")
                group.create_task(self._supervisor.keep(f"{prefix}watcher", watcher.run))
                if checker.mirrors:
                    group.create_task(self._supervisor.keep(f"{prefix}checks", checker.run))
        finally:
            checker.freshness.close()  # what the last second of checks found
            await repomds.close()
            if keeper is not None:
                await keeper.close()
                if self._desk is not None:
                    self._desk.manifests.pop(tree.repo, None)


class Newest:
    """The newest marker value the watcher saw, for the task that announces it: a value
    seen while the previous one is still being announced replaces any not taken yet."""

    def __init__(self) -> None:
        self._value: str | None = None
        self._ready = asyncio.Event()

    def put(self, value: str) -> None:
        self._value = value
        self._ready.set()

    async def take(self) -> str:
        await self._ready.wait()
        self._ready.clear()
        value, self._value = self._value, None
        assert value is not None  # noqa: S101 - set with the event
        return value


def _with_host_settings(tree: PublisherConfig, host: PublisherHost) -> PublisherConfig:
    """``tree`` with the running host's values (they change only with a restart)."""
    return dataclasses.replace(
        tree,
        listen=host.listen,
        name=host.name,
        concurrency=host.concurrency,
        timeout=host.timeout,
        retry_for=host.retry_for,
    )


def _with_running_host(
    new: PublisherHost, running: PublisherHost, repos: tuple[PublisherConfig, ...]
) -> PublisherHost:
    """``new`` with the running host's values of the keys that change only with a restart."""
    return dataclasses.replace(
        new,
        repos=repos,
        **{key: getattr(running, key) for key in RESTART_KEYS},
    )


def _settings(tree: PublisherConfig) -> PublisherConfig:
    """A tree's own settings: host-level copies are compared on their own."""
    return dataclasses.replace(tree, listen=(), name="", concurrency=0, timeout=0.0, retry_for=0.0)
