"""The trees a receiver serves, at work: wired, started, stopped, and swapped on reload.

``build_receiver`` wires one tree (sync engine, scheduler, poller, the live notes for
``status``, the host's sync slots, the hooks after a sync). A ``Fleet`` holds every tree of
a ``[receiver]`` section for ``mirrorhook serve``, runs their tasks for the app's lifetime,
and applies a changed config without a restart (``SIGHUP``): trees whose settings did not
change keep their state, schedules and running syncs; removed ones stop as at shutdown; new
and changed ones start with their start-up check (docs/design.md#many-repositories). A tree
that a repository leaves (removed, or moved to another target) is swept of rsync's
leftovers once its last rsync has ended, since no sync of that repository will again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from pathlib import Path

from aiohttp import web

from mirrorhook import hooks, lock, receiver_state
from mirrorhook.config import Config
from mirrorhook.errors import MarkerError, SyncError
from mirrorhook.intake import Intake
from mirrorhook.leftovers import sweep_left_tree
from mirrorhook.log import TreeLog
from mirrorhook.metrics import Metrics, TreeMetrics
from mirrorhook.poller import Poller
from mirrorhook.receiver import Receiver, start_tasks, stop_tasks
from mirrorhook.receiver_config import LOCKS_FOLDER, REPOS_FOLDER, ReceiverConfig, ReceiverHost
from mirrorhook.receiver_records import DaemonNote
from mirrorhook.receiver_state import DaemonNotes, receiver_state_path
from mirrorhook.reporter import Reporter
from mirrorhook.scheduler import Phase, Scheduler
from mirrorhook.slots import SyncSlots
from mirrorhook.status import host_status
from mirrorhook.subscription import Follower
from mirrorhook.supervisor import Supervisor
from mirrorhook.syncer import Syncer
from mirrorhook.transports import Transports
from mirrorhook.trigger import Trigger

logger = logging.getLogger(__name__)

START_SPREAD = 1.0
"""Seconds between the start-up checks of a host's repositories."""


def build_receiver(
    config: ReceiverConfig,
    host: Config | None = None,
    *,
    metrics: Metrics | None = None,
    supervisor: Supervisor | None = None,
    slots: SyncSlots | None = None,
    start_after: float = 0.0,
    transports: Transports | None = None,
) -> Receiver:
    """Wire the receiver's parts together for one tree.

    ``slots`` are the host's sync slots, shared by its trees; ``start_after`` delays this
    tree's start-up check, so that a host's repositories do not all check at once.
    """
    metrics = metrics or Metrics()
    tree = metrics.tree(config.name)
    log = TreeLog(logger, config.name)
    supervisor = supervisor or Supervisor()
    slots = slots or SyncSlots(1)
    syncer = Syncer(config, metrics=tree)
    reporter = Reporter(config)
    _restore_metrics(config, syncer, tree)
    waiting_for_slot = False

    def waiting(*, now: bool) -> Callable[[], None]:
        def note() -> None:
            nonlocal waiting_for_slot
            waiting_for_slot = now
            if now:
                log.info("all %d sync slots are taken: waiting for one", slots.size)
            note_change()

        return note

    async def run_sync(trigger: Trigger) -> None:
        try:
            # The tree's locks first: a cron sync of this tree running for hours must not keep
            # one of the host's slots idle meanwhile.
            if lock.is_locked(config):
                log.info("another sync of this tree is running: waiting for it to finish")
            async with (
                lock.hold_waiting(config) as lock_fds,
                slots.hold(on_wait=waiting(now=True), on_slot=waiting(now=False)),
            ):
                report = await syncer.sync(if_changed=True, trigger=trigger, lock_fds=lock_fds)
        except SyncError as err:
            # Run outside the slot and the lock: a slow hook must not hold up other trees.
            reporter.sync_ended("failed", None, str(err))
            await hooks.after_sync(config, "failed", None, time.time())
            raise
        reporter.sync_ended(str(report.result), report.marker, None)
        await hooks.after_sync(config, str(report.result), report.marker, time.time())

    followers: tuple[Follower, ...] = ()  # made below, with the intake

    def note_change() -> None:
        notes.note(
            DaemonNote.now(
                phase=Phase.WAITING if waiting_for_slot else scheduler.phase,
                starts_at=scheduler.starts_at,
                next_poll=poller.next_at,
                subscriptions=tuple(follower.seen.note() for follower in followers),
            )
        )

    def noted(err: OSError | None) -> None:
        # A live note for `mirrorhook status`, best effort: a full disk must not stop syncs.
        if err is None:
            supervisor.clear(topic)
        else:
            supervisor.warn(topic, f"cannot write {receiver_state_path(config)}: {err.strerror}")

    topic = "state notes" if config.name is None else f"state notes of {config.name}"
    notes = DaemonNotes(config, on_written=noted)

    scheduler = Scheduler(run_sync, backoff=config.backoff, on_change=note_change, repo=config.name)
    poller = Poller(
        scheduler,
        backoff=config.backoff,
        interval=config.poll_interval,
        jitter=config.poll_jitter,
        start_after=start_after,
        on_change=note_change,
        repo=config.name,
    )
    intake = Intake(config, syncer, scheduler, reporter)
    transports = transports or Transports()
    followers = tuple(
        Follower(entry, intake, transports.of(entry, config), on_change=note_change)
        for entry in config.subscribe
    )
    return Receiver(
        config=config,
        syncer=syncer,
        scheduler=scheduler,
        intake=intake,
        followers=followers,
        poller=poller,
        status=lambda: host_status(host or _host_of(config)),
        metrics=metrics,
        tree_metrics=tree,
        reporter=reporter,
        notes=notes,
        supervisor=supervisor,
    )


def _host_of(config: ReceiverConfig) -> Config:
    """A stand-in host for one tree built on its own (as the tests do)."""
    host = ReceiverHost(listen=config.listen, state_dir=config.state_dir, repos=(config,))
    return Config(path=Path("-"), receivers=host)


def _restore_metrics(config: ReceiverConfig, syncer: Syncer, metrics: TreeMetrics) -> None:
    """Start the gauges from the state file: an alert on the last success's age must not
    fire just because the daemon restarted."""
    last_success = receiver_state.read(config).last_success
    if last_success is not None:
        with contextlib.suppress(ValueError):
            metrics.succeeded_at(datetime.fromisoformat(last_success).timestamp())
    with contextlib.suppress(MarkerError):  # unreadable now: the first sync will say why
        metrics.set_marker("local", syncer.local_marker())


class Fleet:
    """Every tree of a ``[receiver]`` section, their tasks, and their reloads."""

    def __init__(self, config: Config, metrics: Metrics, supervisor: Supervisor) -> None:
        host = config.receivers
        if host is None:
            raise ValueError("a Fleet needs a [receiver] section")
        self.config = config
        self._metrics = metrics
        self._supervisor = supervisor
        self._slots = SyncSlots(host.max_syncs)
        self._transports = Transports()
        self.receivers: dict[str | None, Receiver] = {}
        """The app's ``RECEIVERS``: the hook handler finds each tree here by name."""
        self._tasks: dict[str | None, list[asyncio.Task[None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        """Work left by reloads: replaced trees' tasks waiting for their running sync to
        end, sweeps of the trees repositories left."""
        self._reloading = asyncio.Lock()
        for index, repo in enumerate(host.repos):
            self.receivers[repo.name] = self._build(repo, start_after=index * START_SPREAD)

    async def lifetime(self, _app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: run every tree's tasks while the app runs."""
        for name, receiver in self.receivers.items():
            self._tasks[name] = start_tasks(receiver)
        yield
        for task in self._background:
            task.cancel("receiver shutting down")
        await asyncio.gather(
            *self._background,
            *(self._stop(name) for name in list(self._tasks)),
            return_exceptions=True,
        )
        await self._transports.close()

    async def reload(self, config: Config) -> str | None:
        """Apply ``config``'s ``[receiver]`` section to the running trees (see the module);
        return why it was refused, when it was (``None``: applied).

        In two phases: the new and changed trees are built first (nothing changes when that
        fails), then removed trees are stopped and the others swapped. A changed tree's
        running sync is not cut short: its old scheduler ends once that sync has, and the
        new one's start-up check waits for the tree's lock meanwhile.
        """
        async with self._reloading:
            old, new = self.config.receivers, config.receivers
            assert old is not None  # noqa: S101 - a Fleet always has one
            if new is None or new.single != old.single:
                problem = (
                    f"{config.path}: receiver: adding or removing [receiver], or switching "
                    "between one tree and [receiver.repos], needs a restart"
                )
                logger.error("reload refused, the running config stays: %s", problem)
                return problem
            self._note_host_changes(old, new)
            new = _on_running_host(new, old)
            running = {repo.name: repo for repo in old.repos}
            changed = [repo for repo in new.repos if running.get(repo.name) != repo]
            try:
                built = {
                    repo.name: self._build(repo, start_after=index * START_SPREAD)
                    for index, repo in enumerate(changed)
                }
            except OSError as err:
                logger.error("reload refused, the running config stays: %s", err)
                return f"{config.path}: receiver: {err}"
            for name in running.keys() - {repo.name for repo in new.repos}:
                await self._stop(name)
                removed = self.receivers.pop(name)
                self._in_background(sweep_left_tree(removed.config))
                self._metrics.forget(name)
                logger.info("reload: repository %s removed (its sync, if any, was stopped)", name)
            for name, receiver in built.items():
                if name in running:
                    replaced = self.receivers[name]
                    moved = replaced.config.target != receiver.config.target
                    self._retire(replaced, self._tasks.pop(name, []), sweep=moved)
                    logger.info("reload: repository %s changed: started anew", name)
                else:
                    logger.info("reload: repository %s added", name)
                self.receivers[name] = receiver
                self._tasks[name] = start_tasks(receiver)
            self.config = dataclasses.replace(self.config, receivers=new)
            logger.info("reload: %s applied", config.path)
            return None

    def _retire(self, receiver: Receiver, tasks: list[asyncio.Task[None]], *, sweep: bool) -> None:
        """Stop a replaced tree's tasks once its running sync (if any) has ended; with
        ``sweep`` (its successor has another target), sweep the tree it leaves."""

        async def retire() -> None:
            for task in tasks[1:]:  # the poller (start_tasks puts the scheduler first)
                task.cancel("replaced by a reload")
            receiver.scheduler.discard_pending()  # its successor checks the tree at start
            await receiver.scheduler.not_syncing.wait()
            await stop_tasks(receiver, tasks, forget=False)
            if sweep:
                await sweep_left_tree(receiver.config)

        self._in_background(retire())

    def _in_background(self, work: Coroutine[None, None, None]) -> None:
        """Run a reload's leftover ``work``, cancelled at shutdown."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _note_host_changes(self, old: ReceiverHost, new: ReceiverHost) -> None:
        for key in ("listen", "state_dir", "max_body"):
            if getattr(old, key) != getattr(new, key):
                logger.warning(
                    "reload: receiver.%s changed: it takes effect at the next restart", key
                )
        if new.max_syncs != old.max_syncs:
            self._slots.resize(new.max_syncs)
            logger.info("reload: max_syncs is now %d", new.max_syncs)

    def _build(self, repo: ReceiverConfig, start_after: float) -> Receiver:
        repo.state_dir.mkdir(parents=True, exist_ok=True)
        return build_receiver(
            repo,
            self.config,
            metrics=self._metrics,
            supervisor=self._supervisor,
            slots=self._slots,
            start_after=start_after,
            transports=self._transports,
        )

    async def _stop(self, name: str | None) -> None:
        tasks = self._tasks.pop(name, [])
        if name in self.receivers:
            await stop_tasks(self.receivers[name], tasks)


def _on_running_host(new: ReceiverHost, old: ReceiverHost) -> ReceiverHost:
    """``new`` with the running host's ``listen``, ``max_body`` and state folders, which
    change only with a restart: moving a tree's state (its locks!) under a running sync
    would let another sync run beside it."""
    repos = []
    for repo in new.repos:
        state = old.state_dir if repo.name is None else old.state_dir / REPOS_FOLDER / repo.name
        repos.append(
            dataclasses.replace(
                repo,
                listen=old.listen,
                max_body=old.max_body,
                state_dir=state,
                locks_dir=old.state_dir / LOCKS_FOLDER,
            )
        )
    return dataclasses.replace(
        new, listen=old.listen, max_body=old.max_body, state_dir=old.state_dir, repos=tuple(repos)
    )
