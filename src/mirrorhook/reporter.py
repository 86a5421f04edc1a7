"""Telling the upstream how each sync ended, when its webhooks ask for it.

A webhook whose publisher has a ``public_url`` carries ``data.report_url`` and
``data.mirror``; the receiver remembers both (in its state file, so across restarts) and,
after every sync that installed a new marker or failed, POSTs a ``mirror.synced`` report
signed with the same secret (unsigned, a mere hint, when it verifies the upstream's public
key and holds no secret). A few bounded retries in the background, never delaying a
sync; a report that cannot be delivered is logged and dropped — the publisher's checks of
``check_url`` are the safety net (docs/design.md#freshness).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from mirrorhook import receiver_records, receiver_state, signing
from mirrorhook.errors import MirrorhookError
from mirrorhook.log import TreeLog
from mirrorhook.message import REPORT_TYPE
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.retry import Backoff, retrying

logger = logging.getLogger(__name__)

REPORT_ATTEMPTS = 3
REPORT_TIMEOUT = 10.0
"""Seconds one report attempt may take."""


class ReportError(MirrorhookError):
    """The publisher did not take a report (a reason in a few words)."""


class Reporter:
    """Reports one tree's sync outcomes to the publisher that asked for them."""

    def __init__(self, config: ReceiverConfig, backoff: Backoff | None = None) -> None:
        self.config = config
        self._backoff = backoff or Backoff(first=1.0, cap=4.0)
        self._log = TreeLog(logger, config.name)
        self.to = receiver_state.read(config).report
        """Where to report, as the last verified webhook said (``None``: not asked to)."""
        self._sending: set[asyncio.Task[None]] = set()

    async def remember(self, url: str | None, mirror: str | None, repo: str | None) -> None:
        """A verified webhook said where to report, under which name, and for which of the
        upstream's repositories (or nothing)."""
        if url is None or mirror is None:
            return
        to = receiver_records.ReportTo(url, mirror, repo)
        if to == self.to:
            return
        self.to = to
        try:
            await receiver_state.remember_report(self.config, to)
        except OSError as err:
            self._log.warning("cannot remember the report URL: %s", err.strerror)

    def sync_ended(self, result: str, current: str | None, error: str | None) -> None:
        """Report a sync that installed ``current`` or failed, in the background."""
        if self.to is None or result not in ("synced", "failed"):
            return
        data: dict[str, Any] = {
            "mirror": self.to.mirror,
            # The upstream's name for the repository; a webhook from before it said one
            # leaves this mirror's own.
            "repo": self.to.repo or self.config.name,
            "marker": self.config.marker,
            "current": current,
            "result": result,
            "error": error,
        }
        body = json.dumps(
            {"type": REPORT_TYPE, "timestamp": _now(), "data": data}, separators=(",", ":")
        ).encode()
        task = asyncio.create_task(self._send(self.to.url, body))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, url: str, body: bytes) -> None:
        msg_id = f"msg_{uuid.uuid4().hex}"
        try:
            async for attempt in retrying(
                should_retry=lambda err: isinstance(err, ReportError),
                backoff=self._backoff,
                what=f"report to {url}",
                attempts=REPORT_ATTEMPTS,
            ):
                with attempt:
                    await self._post(url, msg_id, body)
        except ReportError as err:
            self._log.warning("report to %s dropped: %s", url, err)

    async def _post(self, url: str, msg_id: str, body: bytes) -> None:
        import aiohttp  # noqa: PLC0415 - the daemon has it loaded; one-shot commands never report

        now = int(time.time())
        if self.config.secret is not None:
            headers = signing.signed_headers(self.config.secret, msg_id, now, body)
        else:  # a mirror that verifies with the upstream's public key: a hint, unsigned
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(now)}
        headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as answer,
            ):
                if not 200 <= answer.status < 300:
                    raise ReportError(f"HTTP {answer.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise ReportError(f"{type(err).__name__}: {err}"[:200]) from None
        self._log.debug("reported to %s", url)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
