"""``mirrorhook serve``: the long-running daemon and its life cycle.

Signals only set an event; shutdown then closes the listeners, lets in-flight requests
finish, and cancels the background work (which terminates a running rsync and leaves the
marker untouched, docs/design.md#shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mirrorhook import changes_routes, endpoints, events, metalink, mirrorlist, page, reports
from mirrorhook.addresses import Listen, redact_upstream
from mirrorhook.announcers import Announcers
from mirrorhook.broadcast import start_broadcast
from mirrorhook.config import Config, parse_config, read_config_text
from mirrorhook.daemon_note import ConfigNotes
from mirrorhook.delivery import Courier
from mirrorhook.errors import ConfigError
from mirrorhook.events import EventStreams
from mirrorhook.fleet import Fleet
from mirrorhook.listeners import listener_limits, raise_open_files_limit, start_web
from mirrorhook.log import counted
from mirrorhook.metrics import Metrics
from mirrorhook.receiver import RECEIVERS, make_app
from mirrorhook.receiver_config import repositories
from mirrorhook.running_config import daemon_status
from mirrorhook.sdnotify import Notifier
from mirrorhook.subscription import Seen
from mirrorhook.subscription_metrics import SubscriptionCollector
from mirrorhook.supervisor import Supervisor

logger = logging.getLogger(__name__)

REFUSED = "reload refused, the running config stays (see the log)"
"""systemd's STATUS= after a reload that was refused."""


async def serve(config: Config) -> None:
    """Run every role of ``config`` until SIGTERM or SIGINT (every task is supervised:
    one that fails is restarted, see ``supervisor.py``)."""
    raise_open_files_limit()
    _tune_collector()
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
    notes = ConfigNotes(config)

    def status() -> dict[str, Any]:
        """The host as it runs now: a reload changes its receivers and its publishers."""
        running = config if fleet is None else fleet.config
        if announcers is not None:
            running = dataclasses.replace(running, publishers=announcers.host)
        return _with_subscribers(daemon_status(running, notes.note), running, streams)

    common = endpoints.Endpoints(status, metrics, supervisor)
    reload_wanted = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    async with contextlib.AsyncExitStack() as stack:
        app, listen, desk, streams = _app(config, fleet, common)
        _count_subscriptions(metrics, fleet, streams, lambda: announcers)
        if desk is not None:
            desk.streams = streams  # the page counts each repository's subscribers
            stack.callback(desk.refusals.flush)  # after the listeners close: the last count
        await _open(stack, app, listen, fleet, config)
        _log_receivers(config)
        if (publishers := config.publishers) is not None:
            # One courier for every tree: `concurrency` bounds the host's deliveries.
            courier = await stack.enter_async_context(
                Courier(timeout=publishers.timeout, concurrency=publishers.concurrency)
            )
            broadcast = start_broadcast(publishers, streams, supervisor, stack)
            announcers = Announcers(
                publishers, courier, metrics, supervisor, desk, broadcast=broadcast
            )
            announcers.start()
            stack.push_async_callback(announcers.stop)
        await notes.loaded(config)
        stack.push_async_callback(notes.remove)
        systemd = Notifier()
        systemd.ready(_summary(config))
        watchdog = asyncio.create_task(systemd.keep_alive())
        reloads = asyncio.create_task(
            supervisor.keep(
                "reload",
                lambda: _reloads(config, reload_wanted, (fleet, announcers), notes, systemd),
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
) -> tuple[web.Application, tuple[Listen, ...], reports.ReportDesk | None, EventStreams | None]:
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
    desk = streams = None
    if config.publishers is not None:
        desk = reports.ReportDesk(config.publishers)
        streams = EventStreams(config.publishers.max_subscribers)
        events.add_routes(app, streams, desk)
        changes_routes.add_routes(app, desk)
        reports.add_routes(app, desk)
        mirrorlist.add_routes(app, desk)
        metalink.add_routes(app, desk)
        page.add_routes(app, desk)
    return app, listen, desk, streams


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
    started: Config,
    wanted: asyncio.Event,
    roles: tuple[Fleet | None, Announcers | None],
    notes: ConfigNotes,
    systemd: Notifier,
) -> None:
    """Reload the config file at each SIGHUP (``systemctl reload mirrorhook``); a file that
    does not load, or that only a restart can apply, is refused with its problems in the log,
    and the running config stays. Either way ``notes`` says what runs, for ``status``.
    systemd hears RELOADING=1 at the start and READY=1 at the end, so that ``systemctl
    reload`` returns once the reload is done."""
    path = started.path
    while True:
        await wanted.wait()
        wanted.clear()
        logger.info("received SIGHUP: reloading %s", path)
        systemd.reloading()
        text = None
        try:
            text = await asyncio.to_thread(read_config_text, path)
            config = await asyncio.to_thread(parse_config, path, text)
            _check_restartless(started, config)
        except ConfigError as err:
            for problem in err.problems:
                logger.error("reload refused, the running config stays: %s", problem)
            await notes.refused(err.problems, text)
            systemd.ready(REFUSED)
            continue
        fleet, announcers = roles
        refusal = None
        try:
            # The receivers' trees are built first: when one cannot be, nothing is applied.
            refusal = None if fleet is None else await fleet.reload(config)
            if refusal is not None:
                await notes.refused([refusal], text)
            else:
                if announcers is not None:
                    await announcers.reload(config)
                await notes.loaded(config)
        finally:
            systemd.ready(REFUSED if refusal is not None else _summary(config))


def _check_restartless(started: Config, config: Config) -> None:
    """Raise ``ConfigError`` when ``config`` adds or removes a role's section, or switches
    one between its two forms: only a restart applies that, so the reload applies nothing
    of the file (docs/design.md#many-repositories)."""
    sections = (
        ("receiver", started.receivers, config.receivers),
        ("publisher", started.publishers, config.publishers),
    )
    for name, running, new in sections:
        if (running is None) != (new is None):
            change = "adding" if running is None else "removing"
            problem = f"{change} [{name}] needs a restart (systemctl restart mirrorhook)"
        elif running is not None and new is not None and running.single != new.single:
            problem = (
                f"switching between one tree and [{name}.repos] needs a restart "
                "(systemctl restart mirrorhook)"
            )
        else:
            continue
        raise ConfigError([f"{config.path}: {name}: {problem}"])


def _summary(config: Config) -> str:
    """One line for systemd's STATUS=: what this daemon does."""
    parts = []
    if config.receiver is not None:
        parts.append(f"mirroring {redact_upstream(config.receiver.upstream)}")
    elif config.receivers is not None:
        parts.append(
            f"mirroring {counted(len(config.receivers.repos), 'repository', 'repositories')}"
        )
    if config.publisher is not None:
        parts.append(f"announcing to {counted(len(config.publisher.mirrors), 'mirror')}")
    elif config.publishers is not None:
        parts.append(
            f"announcing {counted(len(config.publishers.repos), 'repository', 'repositories')}"
        )
    return ", ".join(parts)


COLLECTOR_THRESHOLDS = (50_000, 20, 10)
"""Python's young-generation threshold raised from 700 allocations to 50,000: a publisher
holding 10,000 event streams tracks some 700,000 objects, and the default thresholds make
full collections of them, each freezing the loop for 0.2 to 0.6 s (BENCHMARKS.md §9)."""


def _tune_collector() -> None:
    """Collect less often: what the daemon keeps lives for its whole life (configs, trees,
    connections), and the objects made so far (imports, the config) are frozen out of the
    collector's scans for good."""
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


async def _open(
    stack: contextlib.AsyncExitStack,
    app: web.Application,
    listen: tuple[Listen, ...],
    fleet: Fleet | None,
    config: Config,
) -> None:
    """Serve ``app`` on ``listen`` until the stack closes; with no port (every repository
    subscribes) run the trees without the web app."""
    if listen:
        stack.push_async_callback((await start_web(app, listen, listener_limits(config))).cleanup)
    elif fleet is not None:
        await stack.enter_async_context(contextlib.asynccontextmanager(fleet.lifetime)(app))


def _with_subscribers(
    shown: dict[str, Any], running: Config, streams: EventStreams | None
) -> dict[str, Any]:
    """``/v1/status`` with the event streams open for each published repository."""
    if streams is not None and running.publishers is not None:
        shown["subscribers"] = {
            tree.label: streams.count(tree.repo) for tree in running.publishers.repos
        }
    return shown


def _count_subscriptions(
    metrics: Metrics,
    fleet: Fleet | None,
    streams: EventStreams | None,
    announcers: Callable[[], Announcers | None],
) -> None:
    """Put the subscriptions of the running trees (a reload changes them) and each
    published repository's subscribers in ``/metrics``."""

    def followed() -> list[tuple[str | None, Seen]]:
        receivers = {} if fleet is None else fleet.receivers
        return [(name, f.seen) for name, tree in receivers.items() for f in tree.followers]

    def counted() -> list[tuple[str | None, int]]:
        running = announcers()
        if streams is None or running is None:
            return []
        return [(tree.repo, streams.count(tree.repo)) for tree in running.host.repos]

    metrics.registry.register(SubscriptionCollector(followed, counted, repos=metrics.repos))


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        logger.info("received %s", sig.name)
        stop.set()

    return handler
