"""The daemon's listeners: every address of ``listen`` served under the connection guard's
deadlines and bounds (``connections.py``), unix sockets made and cleaned up safely, and the
open-files limit that the connections need."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from pathlib import Path

from aiohttp import web

from mirrorhook.addresses import Listen
from mirrorhook.config import Config
from mirrorhook.connections import (
    ACCEPT_QUEUE,
    MAX_CONNECTIONS,
    ConnectionGuard,
    GuardedSite,
    Limits,
    connection_bound,
)
from mirrorhook.errors import ListenError
from mirrorhook.throttle import AcceptErrorLog

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish at shutdown."""


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


def listener_limits(config: Config) -> Limits:
    """The listeners' limits: room for every event stream besides the daemon's own
    connections, and a kernel queue long enough for them to come back at once."""
    streams = 0 if config.publishers is None else config.publishers.max_subscribers
    return Limits(max_connections=listener_bound(config), accept_queue=ACCEPT_QUEUE + streams // 2)


def listener_bound(config: Config) -> int:
    """The listeners' connection bound: room for every event stream besides."""
    streams = 0 if config.publishers is None else config.publishers.max_subscribers
    bound = connection_bound(streams)
    if bound < MAX_CONNECTIONS + streams:
        logger.warning(
            "max_subscribers = %d, but the open-files limit allows %d connections in all: "
            "raise LimitNOFILE",
            streams,
            bound,
        )
    return bound


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: a publisher with a thousand
    mirrors, several of them slow, can have that many deliveries in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logger.debug("open files limit raised from %d to %d", soft, hard)
