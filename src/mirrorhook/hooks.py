"""The operator's ``exec_on_success`` and ``exec_on_failure`` commands, run after a sync.

A mirror index to refresh or a cache to purge: ``exec_on_success`` runs after a sync that
installed a new marker, ``exec_on_failure`` after one that failed. Each is an argument
list, never a shell, started like rsync (its own process group, a deadline); it learns
what happened from ``MIRRORHOOK_REPO``, ``MIRRORHOOK_MARKER`` and ``MIRRORHOOK_RESULT`` in
its environment. Its output is logged; its failure is logged and recorded, and never
undoes the sync (docs/design.md#many-repositories).

Its environment is a small one, not the daemon's (docs/design.md#the-hook-environment):
the daemon's may hold ``RSYNC_PASSWORD`` (the upstream's credential), systemd's
``NOTIFY_SOCKET`` (through which a child could tell systemd that the daemon is ready or
stopping) and ``CREDENTIALS_DIRECTORY``, or whatever else a unit file sets; none of it is
the hook's business.
"""

from __future__ import annotations

import logging
import os

from mirrorhook import process, receiver_records, receiver_state
from mirrorhook.log import TreeLog
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.state import iso_time

logger = logging.getLogger(__name__)

HOOK_TIMEOUT = 300.0
"""Seconds an ``exec_on_*`` command may run before its process group is stopped."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""A hook's ``PATH`` when the daemon has none (the default of systemd's services, plus
/sbin and /bin for hosts that have not merged /usr)."""
PASSED_ON = ("HOME", "LANG", "LC_ALL", "TZ")
"""The daemon's variables a hook gets too, when set: where its tools find their own
configuration (``HOME``; the hook runs as the daemon's user, so it adds nothing the hook
could not read anyway), and the locale and time zone its output is written in."""


async def after_sync(
    config: ReceiverConfig,
    result: str,
    marker: str | None,
    now: float,
    *,
    timeout: float = HOOK_TIMEOUT,
) -> None:
    """Run the command for ``result`` (``synced`` or ``failed``), if one is configured."""
    key = "exec_on_success" if result == "synced" else "exec_on_failure"
    argv = config.exec_on_success if result == "synced" else config.exec_on_failure
    if result not in ("synced", "failed") or not argv:
        return
    env = hook_environment(config, result, marker)
    outcome = await _run(TreeLog(logger, config.name), key, argv, env, timeout)
    note = receiver_records.HookNote(command=key, outcome=outcome, at=iso_time(now))
    try:
        await receiver_state.note_hook(config, note)
    except OSError as err:
        logger.warning("cannot record the outcome of %s: %s", key, err)


def hook_environment(config: ReceiverConfig, result: str, marker: str | None) -> dict[str, str]:
    """The whole environment of a hook: ``PATH`` (the daemon's, else ``DEFAULT_PATH``), the
    ``PASSED_ON`` variables the daemon has, and the ``MIRRORHOOK_*`` variables.

    ``marker`` is the value the sync installed as ``marker.py`` read it (held to the marker
    rules: one printable line, stripped), never the upstream file's bytes; empty after a
    failure.
    """
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH}
    env |= {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    return env | {
        "MIRRORHOOK_REPO": config.name or "",
        "MIRRORHOOK_MARKER": marker or "",
        "MIRRORHOOK_RESULT": result,
    }


async def _run(
    log: TreeLog, key: str, argv: tuple[str, ...], env: dict[str, str], timeout: float
) -> str:
    """Run one hook; log its output and how it ended; return that in a few words."""
    where = f"{key} ({argv[0]})"
    try:
        ran = await process.run(argv, timeout=timeout, env=env, term_grace=1.0)
    except process.StartError as err:
        log.error("%s: %s", where, err)
        return f"could not start: {err}"
    except TimeoutError:
        log.error("%s was stopped after running for %g s", where, timeout)
        return f"stopped after {timeout:g} s"
    for line in (*ran.stdout_tail, *ran.stderr_tail):
        log.info("%s: %s", where, line)
    if ran.returncode != 0:
        log.error("%s exited with status %d", where, ran.returncode)
        return f"exit status {ran.returncode}"
    log.info("%s finished", where)
    return "ok"
