"""Running a child program: an argument list, a process group of its own, a deadline.

rsync and the operator's ``exec_on_*`` hooks are started the same way: never through a
shell, in a new process group (so that stopping it stops whatever it started), with their
output read to the end while only its last lines are kept. A deadline or a cancellation
stops the whole group: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TERM_GRACE = 10.0
"""Seconds a child gets to exit after SIGTERM before it is killed."""
STDERR_TAIL_LINES = 20
STDOUT_TAIL_LINES = 50
READ_CHUNK = 65536
MAX_LINE = 4096
"""Characters kept of one output line."""
_LINE_END = re.compile(r"[\r\n]")


class StartError(Exception):
    """The program could not be started at all (missing, not executable)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """How a child ended: its exit status and the last lines of its output."""

    returncode: int
    stderr_tail: tuple[str, ...]
    stdout_tail: tuple[str, ...]


async def run(
    args: Sequence[str],
    *,
    timeout: float,
    term_grace: float = TERM_GRACE,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``args`` to completion within ``timeout`` seconds, whatever its exit status.

    Raises ``StartError`` when it cannot start and ``TimeoutError`` when the deadline
    passed (the process group is stopped first); a cancellation stops the group too.
    ``pass_fds`` are inherited (the sync lock); ``env`` replaces the environment.
    """
    logger.debug("running %s", " ".join(args))
    try:
        child = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env=env,
        )
    except OSError as err:
        raise StartError(f"cannot run {args[0]}: {err.strerror or err}") from None
    stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    stdout: deque[str] = deque(maxlen=STDOUT_TAIL_LINES)
    name = Path(args[0]).name
    try:
        async with asyncio.timeout(timeout):
            async with asyncio.TaskGroup() as group:
                group.create_task(_collect(child.stderr, stderr, name))
                group.create_task(_collect(child.stdout, stdout, name))
                returncode = await child.wait()
    except BaseException:
        await _stop(child, term_grace, name)
        raise
    return Completed(returncode, tuple(stderr), tuple(stdout))


async def _collect(stream: asyncio.StreamReader | None, tail: deque[str], name: str) -> None:
    """Read a pipe to its end, keeping its last lines (a verbose child must not fill memory).

    Lines end at ``\n`` or ``\r``: rsync's ``--info=progress2`` rewrites one line with
    ``\r`` for the whole transfer, so reading up to ``\n`` could mean one line of megabytes.
    """
    assert stream is not None  # noqa: S101 - both pipes are requested above
    partial = ""
    while chunk := await stream.read(READ_CHUNK):
        *lines, partial = _LINE_END.split(partial + chunk.decode("utf-8", "replace"))
        partial = partial[-MAX_LINE:]
        for line in lines:
            if line:
                logger.debug("%s: %s", name, line)
                tail.append(line[:MAX_LINE])
    if partial:
        tail.append(partial)


async def _stop(child: asyncio.subprocess.Process, grace: float, name: str) -> None:
    """Terminate the child's process group: TERM, a grace period, then KILL; reap the
    child and drain its pipes (so that nothing of it is left open)."""
    if child.returncode is None:
        _signal_group(child.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(child.wait())
        except TimeoutError:
            logger.warning(
                "%s (pid %d) did not exit %g s after SIGTERM: killing it", name, child.pid, grace
            )
    _signal_group(child.pid, signal.SIGKILL)  # and any child it may have left behind
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await asyncio.shield(child.wait())
            for pipe in (child.stdout, child.stderr):
                if pipe is not None:
                    await pipe.read()  # to the end: the pipes close with the process
            await asyncio.sleep(0)  # let the transport notice and close


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
