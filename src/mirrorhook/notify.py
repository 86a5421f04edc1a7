"""``mirrorhook notify``: the upstream's push hook, one announcement with a short budget.

Called from a publish script once the marker is rewritten: every mirror is sent the
current marker at once, each with a few quick retries, and the outcome is one table row
per mirror, whatever happened to each (docs/design.md#delivery-semantics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mirrorhook import marker
from mirrorhook.delivery import Courier, Message
from mirrorhook.errors import MirrorhookError
from mirrorhook.publisher import Outcome, deliver
from mirrorhook.publisher_config import PublisherConfig
from mirrorhook.record import DeliveryLog, DeliveryResult, publisher_state_path
from mirrorhook.retry import Backoff
from mirrorhook.table import format_table

logger = logging.getLogger(__name__)

NOTIFY_ATTEMPTS = 3
NOTIFY_WITHIN = 30.0
"""``mirrorhook notify`` is a push hook: a short retry budget, then it reports and exits."""


async def notify(
    config: PublisherConfig, *, clock: Callable[[], float] = time.time
) -> tuple[str, list[Outcome]]:
    """Deliver the current marker to every mirror once (with a short retry budget).

    A missing, empty or refused marker (see ``marker.load``) raises before anything is sent.
    """
    value = marker.read(config.root / config.marker)
    if not value:
        raise MirrorhookError(
            f"no marker to announce: {config.root / config.marker} is missing or empty"
        )
    hooked = [mirror for mirror in config.mirrors if mirror.url]  # cron mirrors get none
    message = Message.announcing(config, value, clock())
    record = DeliveryLog(publisher_state_path(config))
    record.load()  # what the mirrors accepted before: a redelivery keeps its first time
    async with Courier(timeout=config.timeout, concurrency=config.concurrency) as courier:
        results = await asyncio.gather(
            *(
                deliver(
                    courier,
                    mirror,
                    message,
                    record=record,
                    within=NOTIFY_WITHIN,
                    attempts=NOTIFY_ATTEMPTS,
                    backoff=Backoff(first=1.0, cap=5.0),
                    clock=clock,
                )
                for mirror in hooked
            ),
            return_exceptions=True,
        )
    try:
        record.flush()
    except OSError as err:  # a full state dir: the deliveries happened all the same
        logger.error("cannot record the deliveries in %s: %s", record.path, err)
    # Every mirror gets its row, also one whose delivery failed in a way nobody foresaw.
    outcomes = [
        result
        if isinstance(result, Outcome)
        else Outcome(
            mirror.name, DeliveryResult.FAILED, None, 0.0, 0, f"unexpected error: {result!r}"
        )
        for mirror, result in zip(hooked, results, strict=True)
    ]
    return value, outcomes


def format_outcomes(outcomes: list[Outcome]) -> str:
    """Return one aligned line per mirror: name, result, HTTP status, milliseconds, error."""
    rows = [("MIRROR", "RESULT", "HTTP", "MS", "ERROR")]
    rows += [
        (
            outcome.mirror,
            str(outcome.result),
            str(outcome.status or "-"),
            f"{outcome.seconds * 1000:.0f}",
            outcome.error or "",
        )
        for outcome in outcomes
    ]
    return format_table(rows, right=(2, 3))
