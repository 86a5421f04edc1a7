"""``mirrorhook serve``: the long-running daemon and its life cycle.

Signals only set an event; shutdown then closes the listeners, lets in-flight requests
finish, and cancels the background work (which terminates a running rsync and leaves the
marker untouched, docs/design.md#shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from mirrorhook import endpoints, metalink, mirrorlist, page, reports
from mirrorhook.addresses import Listen, redact_upstream
from mirrorhook.announcers import Announcers
from mirrorhook.config import Config, load_config
from mirrorhook.connections import ConnectionGuard, GuardedSite, Limits
from mirrorhook.delivery import Courier
from mirrorhook.errors import ConfigError, ListenError
from mirrorhook.fleet import Fleet
from mirrorhook.metrics import Metrics
from mirrorhook.receiver import RECEIVERS, make_app
from mirrorhook.receiver_config import repositories
from mirrorhook.sdnotify import Notifier
from mirrorhook.status import host_status
from mirrorhook.supervisor import Supervisor
from mirrorhook.throttle import AcceptErrorLog

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish at shutdown."""


async def serve(config: Config) -> None:
    """Run every role of ``config`` until SIGTERM or SIGINT (every task is supervised:
    one that fails is restarted, see ``supervisor.py``)."""
    _raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    host = config.receivers
    several = [section for section in (host, config.publishers) if section is not None]
    metrics = Metrics(repos=any(not section.single for section in several))
    supervisor = Supervisor()
    fleet = Fleet(config, metrics, supervisor) if host is not None else None
    announcers: Announcers | None = None

    def status() -> dict[str, Any]:
        """The host as it runs now: a reload changes its receivers and its publishers."""
        running = config if fleet is None else fleet.config
        if announcers is not None:
            running = dataclasses.replace(running, publishers=announcers.host)
        return host_status(running)

    common = endpoints.Endpoints(status, metrics, supervisor)
    reload_wanted = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    async with contextlib.AsyncExitStack() as stack:
        app, listen, desk = _app(config, fleet, common)
        if desk is not None:
            stack.callback(desk.refusals.flush)  # after the listeners close: the last count
        if listen:
            stack.push_async_callback((await start_web(app, listen)).cleanup)
        _log_receivers(config)
        if (publishers := config.publishers) is not None:
            # One courier for every tree: `concurrency` bounds the host's deliveries.
            courier = await stack.enter_async_context(
                Courier(timeout=publishers.timeout, concurrency=publishers.concurrency)
            )
            announcers = Announcers(publishers, courier, metrics, supervisor, desk)
            announcers.start()
            stack.push_async_callback(announcers.stop)
        systemd = Notifier()
        systemd.ready(_summary(config))
        watchdog = asyncio.create_task(systemd.keep_alive())
        reloads = asyncio.create_task(
            supervisor.keep(
                "reload",
                lambda: _reloads(config.path, reload_wanted, fleet, announcers, systemd),
            )
        )
        try:
            await stop.wait()
        finally:
            systemd.stopping()
            for task in (watchdog, reloads):
                task.cancel("shutting down")
            await asyncio.gather(watchdog, reloads, return_exceptions=True)
        logger.info("shutting down")
    logger.info("stopped")


def _app(
    config: Config, fleet: Fleet | None, common: endpoints.Endpoints
) -> tuple[web.Application, tuple[Listen, ...], reports.ReportDesk | None]:
    """The daemon's web application and where it listens: the receiver's hooks, the
    publisher's page, mirror list and reports, the common endpoints."""
    listen = config.publishers.listen if config.publishers is not None else ()
    if fleet is not None and config.receivers is not None:
        app = make_app(*fleet.receivers.values(), endpoints=common)
        app[RECEIVERS] = fleet.receivers  # the same mapping: a reload changes it in place
        app.cleanup_ctx.append(fleet.lifetime)
        listen = (*config.receivers.listen, *listen)
    else:
        app = endpoints.make_app(common)
    desk = None
    if config.publishers is not None:
        desk = reports.ReportDesk(config.publishers)
        reports.add_routes(app, desk)
        mirrorlist.add_routes(app, desk)
        metalink.add_routes(app, desk)
        page.add_routes(app, desk)
    return app, listen, desk


def _log_receivers(config: Config) -> None:
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


async def _reloads(
    path: Path,
    wanted: asyncio.Event,
    fleet: Fleet | None,
    announcers: Announcers | None,
    systemd: Notifier,
) -> None:
    """Reload ``path`` at each SIGHUP (``systemctl reload mirrorhook``); a file that does not
    load is refused with its problems in the log, and the running config stays. systemd
    hears RELOADING=1 at the start and READY=1 at the end, so that ``systemctl reload``
    returns once the reload is done."""
    while True:
        await wanted.wait()
        wanted.clear()
        logger.info("received SIGHUP: reloading %s", path)
        systemd.reloading()
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as err:
            for problem in err.problems:
                logger.error("reload refused, the running config stays: %s", problem)
            systemd.ready("reload refused, the running config stays (see the log)")
            continue
        try:
            await _apply(config, fleet, announcers)
        finally:
            systemd.ready(_summary(config))


async def _apply(config: Config, fleet: Fleet | None, announcers: Announcers | None) -> None:
    """Apply a reloaded config to the running receivers and publishers."""
    if fleet is not None:
        await fleet.reload(config)
    elif config.receivers is not None:
        logger.warning("reload: a new [receiver] section takes effect at the next restart")
    if announcers is not None:
        await announcers.reload(config)
    elif config.publishers is not None:
        logger.warning("reload: a new [publisher] section takes effect at the next restart")


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


def _summary(config: Config) -> str:
    """One line for systemd's STATUS=: what this daemon does."""
    parts = []
    if config.receiver is not None:
        parts.append(f"mirroring {redact_upstream(config.receiver.upstream)}")
    elif config.receivers is not None:
        parts.append(f"mirroring {len(config.receivers.repos)} repositories")
    if config.publisher is not None:
        parts.append(f"announcing to {len(config.publisher.mirrors)} mirrors")
    elif config.publishers is not None:
        parts.append(f"announcing {len(config.publishers.repos)} repositories")
    return ", ".join(parts)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: a publisher with a thousand
    mirrors, several of them slow, can have that many deliveries in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logger.debug("open files limit raised from %d to %d", soft, hard)


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
