"""``mirrorhook serve``: the long-running daemon and its life cycle.

Signals only set an event; shutdown then closes the listeners, lets in-flight requests
finish, and cancels the background work (which terminates a running rsync and leaves the
marker untouched, docs/design.md#shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from mirrorhook import endpoints, hooks, lock
from mirrorhook.addresses import Listen, redact_upstream
from mirrorhook.config import Config, PublisherConfig
from mirrorhook.connections import ConnectionGuard, GuardedSite, Limits
from mirrorhook.delivery import Courier
from mirrorhook.errors import ListenError, MarkerError, SyncError
from mirrorhook.metrics import Metrics, TreeMetrics
from mirrorhook.poller import Poller
from mirrorhook.publisher import Publisher
from mirrorhook.receiver import Receiver, background, make_app
from mirrorhook.receiver_config import ReceiverConfig, ReceiverHost, repositories
from mirrorhook.scheduler import Phase, Scheduler
from mirrorhook.sdnotify import Notifier
from mirrorhook.slots import SyncSlots
from mirrorhook.state import read_json
from mirrorhook.status import host_status, record_daemon
from mirrorhook.supervisor import Supervisor
from mirrorhook.syncer import Syncer, receiver_state_path
from mirrorhook.throttle import AcceptErrorLog
from mirrorhook.watcher import MarkerWatcher

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
START_SPREAD = 1.0
"""Seconds between the start-up checks of a host's repositories."""
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish at shutdown."""


def build_receiver(
    config: ReceiverConfig,
    host: Config | None = None,
    *,
    metrics: Metrics | None = None,
    supervisor: Supervisor | None = None,
    slots: SyncSlots | None = None,
    start_after: float = 0.0,
) -> Receiver:
    """Wire the receiver's parts together for one tree.

    ``slots`` are the host's sync slots, shared by its trees; ``start_after`` delays this
    tree's start-up check, so that a host's repositories do not all check at once.
    """
    metrics = metrics or Metrics()
    tree = metrics.tree(config.name)
    supervisor = supervisor or Supervisor()
    slots = slots or SyncSlots(1)
    syncer = Syncer(config, metrics=tree)
    _restore_metrics(config, syncer, tree)
    waiting_for_slot = False

    def waiting(*, now: bool) -> Callable[[], None]:
        def note() -> None:
            nonlocal waiting_for_slot
            waiting_for_slot = now
            if now:
                logger.info("%s: all %d sync slots are taken: waiting", config.name, slots.size)
            note_change()

        return note

    async def run_sync(reason: str) -> None:
        try:
            async with slots.hold(on_wait=waiting(now=True), on_slot=waiting(now=False)):
                if lock.is_locked(config.state_dir):
                    logger.info("another sync of this tree is running: waiting for it to finish")
                async with lock.hold_waiting(config.state_dir) as lock_fd:
                    report = await syncer.sync(if_changed=True, trigger=reason, lock_fd=lock_fd)
        except SyncError:
            # Run outside the slot and the lock: a slow hook must not hold up other trees.
            await hooks.after_sync(config, "failed", None, time.time())
            raise
        await hooks.after_sync(config, str(report.result), report.marker, time.time())

    def note_change() -> None:
        # A live note for `mirrorhook status`, best effort: a full disk must not stop syncs.
        try:
            record_daemon(
                config,
                phase=Phase.WAITING if waiting_for_slot else scheduler.phase,
                starts_at=scheduler.starts_at,
                next_poll=poller.next_at,
            )
        except OSError as err:
            supervisor.warn(
                "state notes", f"cannot write {receiver_state_path(config)}: {err.strerror}"
            )
        else:
            supervisor.clear("state notes")

    scheduler = Scheduler(run_sync, backoff=config.backoff, on_change=note_change)
    poller = Poller(
        scheduler,
        backoff=config.backoff,
        interval=config.poll_interval,
        jitter=config.poll_jitter,
        start_after=start_after,
        on_change=note_change,
    )
    return Receiver(
        config=config,
        syncer=syncer,
        scheduler=scheduler,
        poller=poller,
        status=lambda: host_status(host or _host_of(config)),
        metrics=metrics,
        tree_metrics=tree,
        supervisor=supervisor,
    )


def build_receivers(
    config: Config, metrics: Metrics, supervisor: Supervisor
) -> tuple[Receiver, ...]:
    """Wire every tree of the ``[receiver]`` section, sharing the host's sync slots.

    The trees' start-up checks are spread ``START_SPREAD`` seconds apart, on top of each
    tree's random backoff, so that forty repositories do not ask their upstreams at once.
    """
    host = config.receivers
    if host is None:
        return ()
    slots = SyncSlots(host.max_syncs)
    return tuple(
        build_receiver(
            repo,
            config,
            metrics=metrics,
            supervisor=supervisor,
            slots=slots,
            start_after=index * START_SPREAD,
        )
        for index, repo in enumerate(host.repos)
    )


def _host_of(config: ReceiverConfig) -> Config:
    """A stand-in host for one tree built on its own (as the tests do)."""
    host = ReceiverHost(listen=config.listen, state_dir=config.state_dir, repos=(config,))
    return Config(path=Path("-"), receivers=host)


async def serve(config: Config) -> None:
    """Run every role of ``config`` until SIGTERM or SIGINT (or a role fails)."""
    _raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    host = config.receivers
    metrics = Metrics(repos=host is not None and not host.single)
    supervisor = Supervisor()
    common = endpoints.Endpoints(lambda: host_status(config), metrics, supervisor)
    async with contextlib.AsyncExitStack() as stack:
        roles: list[asyncio.Task[None]] = []
        listen = config.publisher.listen if config.publisher is not None else ()
        if host is not None:
            for repo in host.repos:
                repo.state_dir.mkdir(parents=True, exist_ok=True)
            app = make_app(*build_receivers(config, metrics, supervisor), endpoints=common)
            app.cleanup_ctx.append(background)
            listen = (*host.listen, *listen)
        else:
            app = endpoints.make_app(common)
        if listen:
            stack.push_async_callback((await start_web(app, listen)).cleanup)
        for repo in repositories(config.receivers):
            logger.info(
                "receiver ready: following %s into %s%s",
                redact_upstream(repo.upstream),
                repo.target,
                ""
                if repo.name is None
                else f" (repository {repo.name}, hook /v1/hook/{repo.name})"
                + ("" if repo.enabled else ", disabled"),
            )
        if config.publisher is not None:
            courier = await stack.enter_async_context(
                Courier(timeout=config.publisher.timeout, concurrency=config.publisher.concurrency)
            )
            roles.append(
                asyncio.create_task(_run_publisher(config.publisher, courier, metrics, supervisor))
            )
        systemd = Notifier()
        systemd.ready(_summary(config))
        watchdog = asyncio.create_task(systemd.keep_alive())
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([waiter, *roles], return_when=asyncio.FIRST_COMPLETED)
        finally:
            systemd.stopping()
            for task in (waiter, watchdog, *roles):
                task.cancel("shutting down")
            await asyncio.gather(waiter, watchdog, *roles, return_exceptions=True)
        for role in roles:
            if role.done() and not role.cancelled() and (error := role.exception()):
                raise _first_leaf(error)
        logger.info("shutting down")
    logger.info("stopped")


async def start_web(
    app: web.Application, listen: tuple[Listen, ...], limits: Limits | None = None
) -> web.AppRunner:
    """Serve ``app`` on every address of ``listen``, each connection under the deadlines and
    bounds of ``limits`` (see ``connections.py``); ``runner.cleanup()`` stops it all.

    For the rest of the event loop's life, asyncio's reports of ``accept()`` failing for
    lack of file descriptors are logged at most once per ``limits.warning_period``."""
    guard = ConnectionGuard(limits)
    AcceptErrorLog(guard.limits.warning_period).install(asyncio.get_running_loop())
    guard.guard(app)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE, **guard.handler_args
    )
    await runner.setup()
    try:
        for address in listen:
            await _start_site(runner, guard, address)
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _run_publisher(
    config: PublisherConfig, courier: Courier, metrics: Metrics, supervisor: Supervisor
) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    publisher = Publisher(config, courier, metrics=metrics, supervisor=supervisor)
    watcher = MarkerWatcher(
        config.root,
        config.marker,
        publisher.publish,
        polling=config.watch == "poll",
        rescan=config.rescan,
    )
    logger.info(
        "publisher ready: announcing %s to %d mirrors",
        config.root / config.marker,
        len(config.mirrors),
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(publisher.run(), name="publisher")
        group.create_task(supervisor.keep("watcher", watcher.run), name="watcher")


def _restore_metrics(config: ReceiverConfig, syncer: Syncer, metrics: TreeMetrics) -> None:
    """Start the gauges from the state file: an alert on the last success's age must not
    fire just because the daemon restarted."""
    last_success = read_json(receiver_state_path(config)).get("last_success")
    if isinstance(last_success, str):
        with contextlib.suppress(ValueError):
            metrics.succeeded_at(datetime.fromisoformat(last_success).timestamp())
    with contextlib.suppress(MarkerError):  # unreadable now: the first sync will say why
        metrics.set_marker("local", syncer.local_marker())


def _summary(config: Config) -> str:
    """One line for systemd's STATUS=: what this daemon does."""
    parts = []
    if config.receiver is not None:
        parts.append(f"mirroring {redact_upstream(config.receiver.upstream)}")
    elif config.receivers is not None:
        parts.append(f"mirroring {len(config.receivers.repos)} repositories")
    if config.publisher is not None:
        parts.append(f"announcing to {len(config.publisher.mirrors)} mirrors")
    return ", ".join(parts)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: a publisher with a thousand
    mirrors, several of them slow, can have that many deliveries in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logger.debug("open files limit raised from %d to %d", soft, hard)


def _first_leaf(error: BaseException) -> BaseException:
    """The first error inside nested exception groups (a TaskGroup wraps what failed)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        logger.info("received %s", sig.name)
        stop.set()

    return handler


async def _start_site(runner: web.AppRunner, guard: ConnectionGuard, listen: Listen) -> None:
    if listen.path is not None:
        _remove_stale_socket(listen.path)
    site = GuardedSite(runner, guard, listen)
    try:
        await site.start()
        if listen.path is not None:
            # Connecting needs write permission on the socket: let the group in (nginx's
            # user joins mirrorhook's group), keep everyone else out.
            listen.path.chmod(SOCKET_MODE)
    except OSError as err:
        raise ListenError(listen, err.strerror or str(err)) from None
    logger.info("listening on %s", listen)


def _remove_stale_socket(path: Path) -> None:
    """Remove a unix socket left by a process that died, but never one that is in use."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            logger.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
        except OSError:
            pass  # in use or unreachable: binding will report the real problem
