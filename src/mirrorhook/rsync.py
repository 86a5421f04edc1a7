"""Running rsync: argument lists from the config, process groups, deadlines, the exit-code policy.

rsync is always started with an argument list (never a shell) in a process group of its
own, so that cancelling a sync terminates rsync and any ssh it started. Nothing that
arrives in a webhook is ever part of an argument list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from mirrorhook import marker, process
from mirrorhook.errors import RsyncError, RsyncTimeoutError, SyncError
from mirrorhook.receiver_config import ReceiverConfig

logger = logging.getLogger(__name__)

# The seed script's flags, then the guards long-running mirror tools learned the hard way:
# no symlinks pointing out of the tree, and a stalled transfer ends instead of hanging.
SEED_ARGS = ("-aH", "--numeric-ids", "--delete", "--delete-after", "--delay-updates")
IO_TIMEOUT_ARGS = ("--timeout=600",)
MARKER_TIMEOUT = 300.0
"""Seconds a read of the upstream marker (one small file) may take before it is killed."""
DAEMON_ARGS = ("--contimeout=60",)
"""rsync refuses --contimeout unless it talks to an rsync daemon (rsync:// or HOST::MODULE)."""
NODELAY = "--sockopts=TCP_NODELAY"
"""rsync's protocol sends many small messages; with Nagle's algorithm on, each waits for the
peer's delayed ACK (~40 ms on Linux). Off on our side, a sync on loopback takes about two
thirds of the time, and a quarter when the daemon sets ``socket options = TCP_NODELAY``
too (BENCHMARKS.md §1). Only for daemon connections: over ssh or locally rsync opens no
socket of its own."""


# --- the exit-code policy, the only place that knows it (docs/design.md#the-retry-policy) --

PARTIAL = 23
"""Partial transfer; also what rsync says when a source path does not exist."""
TRANSIENT_CODES = frozenset({10, 12, PARTIAL, 30, 35})
"""Socket I/O, protocol stream, partial transfer, I/O timeout, daemon connection timeout."""
VANISHED = 24
"""Some source files vanished: normal while the upstream publishes; the stage is complete."""
MAX_CONNECTIONS = "max connections"
"""What an rsync daemon says (with exit code 5) when all its slots are taken."""


SIGNALLED = 20
"""rsync was signalled. Ours means we are shutting down (permanent); a daemon that stops or
restarts mid-transfer makes its *sender* report it ("... (code 20) ... [sender=...]"): that
is the upstream going away for a moment, retried like a broken connection."""


def is_transient(returncode: int, stderr_tail: Sequence[str]) -> bool:
    """Return whether a failed rsync run is worth retrying (docs/design.md#the-retry-policy)."""
    if returncode in TRANSIENT_CODES:
        return True
    if returncode == SIGNALLED:
        return any("[sender=" in line for line in stderr_tail)
    return returncode == 5 and any(MAX_CONNECTIONS in line.lower() for line in stderr_tail)


def completes_stage(returncode: int) -> bool:
    """Return whether an rsync exit code means the transfer stage finished."""
    return returncode in (0, VANISHED)


# --- argument lists -----------------------------------------------------------------------


def source_of(upstream: str) -> str:
    """Return the upstream as an rsync source for the tree's contents (with a trailing slash)."""
    return upstream if upstream.endswith("/") else upstream + "/"


def is_daemon(upstream: str) -> bool:
    """Whether rsync talks to an rsync daemon (``rsync://`` or ``HOST::MODULE``) itself."""
    return upstream.startswith("rsync://") or "::" in upstream.split("/", 1)[0]


def connect_args(config: ReceiverConfig) -> list[str]:
    """The connection's arguments for a daemon upstream: ``--contimeout`` (rsync refuses it
    for the other forms) and ``TCP_NODELAY`` unless ``rsync_args`` set socket options."""
    if not is_daemon(config.upstream):
        return []
    args = list(DAEMON_ARGS)
    if not any(arg.startswith("--sockopts") for arg in config.rsync_args):
        args.append(NODELAY)
    return args


def tree_args(config: ReceiverConfig, link_dest: Path | None = None) -> list[str]:
    """The arguments of the stage-1 run: the whole tree except the marker (and the trace
    and lastsync files); with ``link_dest``, unchanged files are hard links to that tree's
    (a snapshot's build, ``snapshots.py``)."""
    # The marker is excluded on the sender and protected on the receiver (even if the
    # operator adds --delete-excluded): it is installed separately, last
    # (docs/design.md#the-two-stage-sync). The trace and lastsync files are ours in the
    # same way: never deleted, never replaced by an upstream file of that name
    # (docs/design.md#trace-files).
    # The guards that end a stalled transfer instead of letting it hang for days; --stats
    # for the bytes-transferred metric.
    args = [config.rsync, *SEED_ARGS, "--safe-links", *IO_TIMEOUT_ARGS, "--stats"]
    args += connect_args(config)
    for name in config.own_files:
        args += [f"--filter=P /{name}", f"--exclude=/{name}"]
    if config.exclude_from is not None:
        args.append(f"--exclude-from={config.exclude_from}")
    args.append(f"--max-delete={config.max_delete}")
    args += config.rsync_args
    if link_dest is not None:
        args.append(f"--link-dest={link_dest}")
    args += ["--", source_of(config.upstream), f"{config.target}/"]
    return args


def _for_the_marker(arg: str) -> bool:
    """Whether the marker read takes this one of ``rsync_args``: not ``-q`` (see
    ``marker_args``), nor a ``--delete...`` option, which rsync refuses without
    ``--recursive`` ("--delete does not work without --recursive") — the one-file read
    has none, and deletes nothing anyway."""
    return arg not in ("-q", "--quiet") and arg != "--del" and not arg.startswith("--delete")


def marker_args(config: ReceiverConfig, destination: Path) -> list[str]:
    """The arguments that copy the upstream marker alone into ``destination``.

    ``--ignore-missing-args`` makes a missing marker an exit 0 without a file, which is how
    "the upstream has no marker" is told apart from a failed transfer. No ``--timeout``:
    it adds some 50 ms to every rsync run (measured with rsync 3.5 against a daemon on
    loopback), and this short run is bounded by ``MARKER_TIMEOUT`` instead.

    The marker is a small regular file: ``--max-size`` leaves a bigger one on the upstream,
    and without ``-l`` a symlink is not copied (nor followed). rsync skips both with exit 0
    and no file, saying so on stdout (``--info=skip1`` for the size); ``skipped_marker``
    reads that. These come after ``rsync_args`` so that no extra argument widens them, and
    ``-q`` is left out of them: it would silence the very lines that tell a refused marker
    from a missing one (and so are ``--delete...`` options, which rsync refuses here).
    """
    return [
        config.rsync,
        "-t",
        "--no-motd",
        "--ignore-missing-args",
        *connect_args(config),
        *filter(_for_the_marker, config.rsync_args),
        f"--max-size={marker.MAX_FILE_BYTES}",
        "--info=skip1",
        "--",
        source_of(config.upstream) + config.marker,
        str(destination),
    ]


# What rsync (3.1 and later; checked with 3.5) prints when it skips the marker argument
# instead of copying it, and what that means. Without one of these lines, no file after a
# successful run means the upstream has no marker; either way nothing is installed.
_MARKER_SKIPS = (
    ("is over max-size", f"it is larger than {marker.MAX_FILE_BYTES} bytes"),
    (
        "skipping non-regular file",
        "it is not a regular file (a symbolic link, a FIFO or a device: rsync skipped it)",
    ),
    ("skipping directory", "it is a directory"),
)


def skipped_marker(output: Sequence[str]) -> str | None:
    """Return why rsync skipped the upstream marker, from its ``output`` lines, or ``None``."""
    for line in output:
        for words, reason in _MARKER_SKIPS:
            if words in line:
                return reason
    return None


# rsync --stats: "Total bytes received: 1,234,567" (thousands separators since 3.1).
_RECEIVED = re.compile(r"Total bytes received: ([\d,.]+)")


def received_bytes(output: Sequence[str]) -> int:
    """Return the bytes a run received, from its ``--stats`` summary; 0 without one."""
    for line in output:
        if match := _RECEIVED.search(line):
            return int(re.sub(r"[,.]", "", match.group(1)))
    return 0


# --- running --------------------------------------------------------------------------------


async def run(
    args: Sequence[str],
    *,
    timeout: float,
    term_grace: float = process.TERM_GRACE,
    pass_fds: Sequence[int] = (),
) -> process.Completed:
    """Run rsync to completion in its own process group, within ``timeout`` seconds.

    Returns the result for exit codes that complete a stage (0 and 24); raises
    ``RsyncError`` for every other code, ``RsyncTimeoutError`` when the deadline passes.
    Cancellation terminates the process group (TERM, then KILL after ``term_grace``
    seconds) before re-raising. ``pass_fds`` are inherited by rsync (the sync lock).
    """
    try:
        ran = await process.run(args, timeout=timeout, term_grace=term_grace, pass_fds=pass_fds)
    except process.StartError as err:
        raise SyncError(str(err)) from None
    except TimeoutError:
        raise RsyncTimeoutError(timeout) from None
    if completes_stage(ran.returncode):
        if ran.returncode == VANISHED:
            logger.info("rsync: some files vanished on the upstream during the transfer")
        return ran
    raise RsyncError(
        ran.returncode, ran.stderr_tail, transient=is_transient(ran.returncode, ran.stderr_tail)
    )
