"""The tree transfer of a sync by change (docs/design.md#the-delta-transfer): the full
transfer's own rsync command (its flags, filters, excludes and ``--max-delete``) given the
change's paths with ``--files-from``, a batch of at most 20,000 per run.

It is used only when the change verified (it came in the signed announcement, or signed
from the publisher: ``change_fetch.py``) and leads from the mirror's own marker to the one
just read upstream; the sync engine falls back to
the full transfer when it does not apply or when a run fails, so drift cannot last. The
two-stage order is unchanged: the upstream marker is read first (an upstream without one
is never synced from) and installed last.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from mirrorhook import rsync
from mirrorhook.changes import Change
from mirrorhook.delta import (
    batches,
    daemon_base,
    delta_rsync_args,
    transfer_units,
    write_list,
)
from mirrorhook.errors import SyncError
from mirrorhook.process import Completed
from mirrorhook.receiver_config import ReceiverConfig

Run = Callable[[list[str]], Awaitable[Completed]]
"""Runs one rsync command (with the sync engine's retries and timeout)."""


async def transfer_change(config: ReceiverConfig, change: Change, run: Run) -> list[Completed]:
    """Bring the tree from ``change.from_marker``'s content to ``change.to_marker``'s by
    transferring only the paths it names; return each run's result (none for an empty
    change)."""
    full = rsync.tree_args(config)
    cut = full.index("--")
    source, base = daemon_base(full[cut + 1])
    tail = ["--", source, *full[cut + 2 :]]
    results = []
    for batch in batches(transfer_units(change)):
        listing = await asyncio.to_thread(_list_file, config.state_dir, batch, base)
        try:
            result = await run([*full[:cut], *delta_rsync_args(listing), *tail])
            if result.returncode == rsync.VANISHED:
                # The full transfer takes 24 for a publish under way (the marker re-read
                # decides); here a listed path is missing: the change does not match the
                # upstream, and the whole tree must be compared.
                raise SyncError("a path the change names vanished upstream")
            results.append(result)
        finally:
            await asyncio.to_thread(listing.unlink, missing_ok=True)
    return results


def _list_file(folder: Path, paths: list[bytes], base: bytes) -> Path:
    """A new list file of ``paths`` in the state folder (never in the tree)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".delta-", suffix=".list")
    os.close(fd)
    write_list(Path(name), paths, base)
    return Path(name)
