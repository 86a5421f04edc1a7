"""Reading the upstream marker (docs/design.md#the-two-stage-sync): the first and the
last step of every sync, and the whole of the cron pre-check.

rsync fetches at most ``marker.MAX_FILE_BYTES`` and no symlink, into a fresh folder of
``state_dir``; the copy is then read with the same rules as every other marker before
anything of it is used. A marker that breaks them is refused for good
(``UpstreamMarkerError``); an upstream without one is never synced from (``NoMarkerError``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from mirrorhook import marker, process, rsync
from mirrorhook.addresses import redact_upstream
from mirrorhook.errors import MarkerError, NoMarkerError, RsyncError, UpstreamMarkerError
from mirrorhook.receiver_config import ReceiverConfig

Retry = Callable[[Callable[[], Awaitable[process.Completed]], str], Awaitable[process.Completed]]
"""Runs an rsync with the sync engine's retry policy (``what`` names it in the logs)."""


async def read_upstream(
    config: ReceiverConfig, retry: Retry, pass_fds: tuple[int, ...] = ()
) -> marker.Marker:
    """Fetch the upstream marker; refuse one that breaks the marker rules (permanent)."""
    source = rsync.source_of(redact_upstream(config.upstream)) + config.marker
    with tempfile.TemporaryDirectory(dir=config.state_dir, prefix=".upstream-") as folder:
        path = Path(folder) / config.marker
        args = rsync.marker_args(config, path)

        async def fetch() -> process.Completed:
            try:
                return await rsync.run(
                    args,
                    timeout=min(config.timeout, rsync.MARKER_TIMEOUT),
                    pass_fds=pass_fds,
                )
            except RsyncError as err:
                # A missing upstream folder (unmounted, say) is not a transient failure.
                if err.returncode == rsync.PARTIAL and any(
                    "No such file or directory" in line for line in err.stderr_tail
                ):
                    raise NoMarkerError(source) from None
                raise

        result = await retry(fetch, "reading the upstream marker")
        try:
            upstream = marker.load(path)
        except MarkerError as err:
            raise UpstreamMarkerError(source, err.reason) from None
    if upstream is None:
        # No file after a successful run: missing upstream, unless rsync skipped it.
        skipped = rsync.skipped_marker(result.stdout_tail + result.stderr_tail)
        if skipped is not None:
            raise UpstreamMarkerError(source, skipped)
        raise NoMarkerError(source)
    return upstream
