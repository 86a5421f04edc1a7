"""``mirrorhook serve``: the long-running daemon and its life cycle.

Signals only set an event; shutdown then closes the listeners, lets in-flight requests
finish, and cancels the background work (which terminates a running rsync and leaves the
marker untouched, SPEC §5.7).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from mirrorhook import lock
from mirrorhook.config import Config, Listen, ReceiverConfig
from mirrorhook.errors import MirrorhookError
from mirrorhook.poller import Poller
from mirrorhook.receiver import Receiver, background, make_app
from mirrorhook.scheduler import Scheduler
from mirrorhook.status import receiver_status
from mirrorhook.syncer import Syncer

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish at shutdown."""


class ListenError(MirrorhookError):
    """An address in ``listen`` cannot be bound."""

    def __init__(self, listen: Listen, reason: str) -> None:
        self.listen = listen
        self.reason = reason
        super().__init__(listen, reason)

    def __str__(self) -> str:
        return f"cannot listen on {self.listen}: {self.reason}"


def build_receiver(config: ReceiverConfig) -> Receiver:
    """Wire the receiver's parts together for one tree."""
    syncer = Syncer(config)

    async def run_sync(reason: str) -> None:
        if lock.is_locked(config.state_dir):
            logger.info("another sync of this tree is running: waiting for it to finish")
        async with lock.hold_waiting(config.state_dir):
            await syncer.sync(if_changed=True, trigger=reason)

    scheduler = Scheduler(run_sync, backoff=config.backoff)
    poller = Poller(
        scheduler,
        backoff=config.backoff,
        interval=config.poll_interval,
        jitter=config.poll_jitter,
    )
    return Receiver(
        config=config,
        syncer=syncer,
        scheduler=scheduler,
        poller=poller,
        status=lambda: receiver_status(config, scheduler=scheduler, poller=poller),
    )


async def serve(config: Config) -> None:
    """Run every role of ``config`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    assert config.receiver is not None  # noqa: S101 - load_config guarantees a role
    receiver_config = config.receiver
    receiver_config.state_dir.mkdir(parents=True, exist_ok=True)
    app = make_app(build_receiver(receiver_config))
    app.cleanup_ctx.append(background)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        for listen in receiver_config.listen:
            await _start_site(runner, listen)
        logger.info(
            "receiver ready: following %s into %s",
            receiver_config.upstream,
            receiver_config.target,
        )
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()
    logger.info("stopped")


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        logger.info("received %s", sig.name)
        stop.set()

    return handler


async def _start_site(runner: web.AppRunner, listen: Listen) -> None:
    site: web.BaseSite
    if listen.path is not None:
        _remove_stale_socket(listen.path)
        site = web.UnixSite(runner, str(listen.path))
    else:
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
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
