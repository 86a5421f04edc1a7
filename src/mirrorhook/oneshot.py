"""``mirrorhook sync``: one sync of one tree now, as cron and first syncs run it.

The same engine, lock and hooks as the daemon's syncs; the lock is not waited for (another
sync holding it means there is nothing to do now), and ``randomize`` spreads the cron jobs
of many mirrors over time, as the hourly script's ``sleep`` did.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from mirrorhook import hooks, lock
from mirrorhook.errors import SyncError
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import COMMAND

logger = logging.getLogger(__name__)


async def sync_tree(
    receiver: ReceiverConfig,
    *,
    if_changed: bool,
    randomize: float,
    rng: random.Random | None = None,
    allow_deletes: bool = False,
) -> None:
    """Sync ``receiver``'s tree once; raise ``LockedError`` when another sync holds its lock
    and ``SyncError`` when the sync fails (the engine has logged and recorded why).

    With ``randomize``, first sleep a random 0..``randomize`` seconds — after the marker
    check when ``if_changed``, so that an up-to-date mirror returns at once.
    """
    syncer = Syncer(receiver)
    if randomize:
        lock.check_free(receiver)
        if if_changed and not await syncer.needs_sync(trigger=COMMAND):
            return
        delay = (rng or random.Random()).uniform(0, randomize)
        logger.info("sleeping %.0f s to spread the mirrors' load on the upstream", delay)
        await asyncio.sleep(delay)
    try:
        with lock.hold(receiver) as lock_fds:
            report = await syncer.sync(
                if_changed=if_changed,
                trigger=COMMAND,
                lock_fds=lock_fds,
                allow_deletes=allow_deletes,
            )
    except SyncError:
        await hooks.after_sync(receiver, "failed", None, time.time())
        raise
    await hooks.after_sync(receiver, str(report.result), report.marker, time.time())
