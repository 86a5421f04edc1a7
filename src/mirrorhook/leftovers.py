"""What an interrupted rsync leaves in a tree, and its removal
(docs/design.md#leftovers-of-an-interrupted-sync): ``--delay-updates`` stages files in
``.~tmp~`` folders that a killed rsync can leave behind."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from mirrorhook import lock, receiver_state
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import ReceiverState, SyncResult

logger = logging.getLogger(__name__)

RSYNC_TMP_DIR = ".~tmp~"
"""The folder ``--delay-updates`` stages files in; a killed rsync can leave it behind."""


def may_have_leftovers(state: ReceiverState) -> bool:
    """Whether the sync before this one may have left ``.~tmp~`` folders: it did not finish
    (a crash leaves its in-progress note), failed or was cancelled, or there was none.

    A completed rsync removes its own staging folders, so a tree whose last sync completed
    need not be walked (a walk of a 100,000-file tree costs a noticeable fraction of a
    no-change sync).
    """
    last = state.last_sync
    if state.in_progress is not None or last is None:
        return True
    return last.result not in (SyncResult.SYNCED, SyncResult.UP_TO_DATE)


async def sweep_left_tree(config: ReceiverConfig) -> None:
    """Delete the ``.~tmp~`` folders that the last sync of ``config``'s tree may have left
    (it was stopped, or failed), in a tree that no sync of this repository will visit again:
    a reload removed the repository or moved its target. Waits for the tree's lock, so that
    the stopped rsync has ended and no other sync is writing (docs/design.md, "Leftovers of
    an interrupted sync"); a failure is only logged.
    """
    # Read at once: a successor of the same name shares the state file.
    if not may_have_leftovers(receiver_state.read(config)):
        return
    try:
        async with lock.hold_waiting(config, tree_only=True):
            await asyncio.to_thread(remove_rsync_leftovers, config.target)
    except OSError as err:
        logger.warning("cannot sweep %s for rsync's leftovers: %s", config.target, err)


def remove_rsync_leftovers(target: Path) -> None:
    """Delete ``.~tmp~`` folders that a killed rsync left behind.

    See docs/design.md#leftovers-of-an-interrupted-sync.
    """
    for folder, subfolders, _files in os.walk(target):
        if RSYNC_TMP_DIR in subfolders:
            subfolders.remove(RSYNC_TMP_DIR)
            leftover = Path(folder) / RSYNC_TMP_DIR
            logger.info("removing %s left behind by an interrupted rsync", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
