"""The commands that act on trees one at a time, as cron and push scripts run them:
``sync`` and ``verify`` on a mirror, ``notify`` on the upstream. Each returns its exit
status (``exits.py``); only ``cli.py`` exits."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from mirrorhook.config import Config
from mirrorhook.errors import ConfigError, LockedError, MirrorhookError, SyncError
from mirrorhook.exits import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK
from mirrorhook.oneshot import sync_tree
from mirrorhook.receiver_config import ReceiverConfig

logger = logging.getLogger("mirrorhook")

_T = TypeVar("_T")


def sync_trees(
    config: Config,
    names: Sequence[str],
    *,
    if_changed: bool,
    randomize: float,
    allow_deletes: bool = False,
) -> int:
    """``mirrorhook sync [NAME ...]``: each named tree (every one without names) once, a
    line each; the exit status of the whole run."""
    host = config.receivers
    if host is None:
        raise ConfigError([f"{config.path}: receiver: this command needs a [receiver] section"])
    repos = named_trees(config, "receiver", host.repos, [r.name for r in host.repos], names)
    if host.single:
        # The same one line as each repository of the host form gets; the tree has no name,
        # so its target names it.
        code = _sync_one(repos[0], if_changed, randomize, allow_deletes)
        sys.stdout.write(f"{repos[0].target}  {_OUTCOMES[code]}\n")
        return code
    if randomize:
        # One wait for the whole run, as the hourly script had: forty repositories must not
        # each sleep up to --randomize seconds in turn.
        delay = random.uniform(0, randomize)
        logger.info("sleeping %.0f s to spread the mirrors' load on the upstreams", delay)
        run_interruptible(asyncio.sleep(delay))
    codes = {}
    for repo in repos:
        enabled = repo.enabled
        codes[repo.name] = _sync_one(repo, if_changed, 0.0, allow_deletes) if enabled else EXIT_OK
        outcome = _OUTCOMES[codes[repo.name]] if repo.enabled else "disabled"
        sys.stdout.write(f"{repo.name}  {outcome}\n")
    if any(code == EXIT_FAILURE for code in codes.values()):
        return EXIT_FAILURE
    if codes and all(code == EXIT_LOCKED for code in codes.values()):
        return EXIT_LOCKED
    return EXIT_OK


_OUTCOMES = {EXIT_OK: "ok", EXIT_LOCKED: "locked", EXIT_FAILURE: "failed"}
"""What ``sync`` prints of each tree, by its exit status."""


def named_trees(
    config: Config,
    section: str,
    trees: Sequence[_T],
    tree_names: Sequence[str | None],
    names: Sequence[str],
) -> list[_T]:
    """The trees named on the command line, in that order; every one without names (the
    single form's one tree has no name to give)."""
    if not names:
        return list(trees)
    if tree_names == [None]:
        raise ConfigError([f"{config.path}: {section}: has no repositories to name"])
    by_name = dict(zip(tree_names, trees, strict=True))
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(str(name) for name in tree_names)
        raise ConfigError(
            [f"{config.path}: {section}.repos: no {unknown[0]!r} (there are {known})"]
        )
    return [by_name[name] for name in names]


def _sync_one(
    receiver: ReceiverConfig, if_changed: bool, randomize: float, allow_deletes: bool
) -> int:
    try:
        run_interruptible(
            sync_tree(
                receiver, if_changed=if_changed, randomize=randomize, allow_deletes=allow_deletes
            )
        )
    except LockedError as err:
        logger.warning("%s: nothing done", err)
        return EXIT_LOCKED
    except SyncError:
        return EXIT_FAILURE  # the sync engine logged why
    return EXIT_OK


def notify_trees(config: Config, names: Sequence[str]) -> int:
    """``mirrorhook notify [NAME ...]``: announce each named tree's marker now, a table
    each; exit 1 when a mirror did not take it."""
    from mirrorhook.notify import format_outcomes, notify  # noqa: PLC0415 - aiohttp
    from mirrorhook.record import DeliveryResult  # noqa: PLC0415

    publishers = config.publishers
    if publishers is None:
        raise ConfigError([f"{config.path}: publisher: this command needs a [publisher] section"])
    repos = [tree.repo for tree in publishers.repos]
    trees = named_trees(config, "publisher", publishers.repos, repos, names)
    failed = False
    for tree in trees:
        heading = "" if tree.repo is None else f"repository {tree.repo}: "
        try:
            value, outcomes = run_interruptible(notify(tree))
        except MirrorhookError as err:
            if publishers.single:
                raise
            sys.stdout.write(f"{heading}{err}\n")
            failed = True
            continue
        sys.stdout.write(f"{heading}marker {value!r}\n{format_outcomes(outcomes)}\n")
        failed |= any(outcome.result is not DeliveryResult.DELIVERED for outcome in outcomes)
    return EXIT_FAILURE if failed else EXIT_OK


SHOWN_DIFFERENCES = 1000
"""Differences ``verify`` prints per tree; the count says how many more there are."""


def verify_trees(config: Config, names: Sequence[str], *, quick: bool) -> int:
    """``mirrorhook verify [NAME ...]``: each named tree (every enabled one without names)
    against the publisher's manifest of its marker; exit 1 when any differs or cannot be
    compared."""
    from mirrorhook.verify import VerifyError, verify_tree  # noqa: PLC0415 - aiohttp

    host = config.receivers
    if host is None:
        raise ConfigError([f"{config.path}: receiver: this command needs a [receiver] section"])
    repos = named_trees(config, "receiver", host.repos, [r.name for r in host.repos], names)
    failed = False
    for repo in repos:
        if not repo.enabled and not names:
            continue
        heading = str(repo.target) if repo.name is None else repo.name
        try:
            verified = run_interruptible(verify_tree(repo, quick=quick))
        except VerifyError as err:
            sys.stdout.write(f"{heading}: cannot verify: {err}\n")
            failed = True
            continue
        compared = f"{verified.entries} entries"
        if not quick:
            compared += f", the contents of {verified.contents} files"
        against = f"the publisher's manifest of marker {verified.marker!r} ({compared})"
        if not verified.differences:
            sys.stdout.write(f"{heading}: identical to {against}\n")
            continue
        failed = True
        count = len(verified.differences)
        sys.stdout.write(f"{heading}: {count} differences from {against}\n")
        for difference in verified.differences[:SHOWN_DIFFERENCES]:
            sys.stdout.write(f"  {difference}\n")
        if count > SHOWN_DIFFERENCES:
            sys.stdout.write(f"  ... and {count - SHOWN_DIFFERENCES} more\n")
        if not verified.settled:
            sys.stdout.write(
                "  (the publisher walked its tree while it changed: some may be its own)\n"
            )
    return EXIT_FAILURE if failed else EXIT_OK


def run_interruptible(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a one-shot command; SIGTERM cancels it like Ctrl-C does (rsync is stopped too)."""

    async def guarded() -> _T:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - we are inside a task
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coroutine

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise MirrorhookError("interrupted by a signal") from None
