"""Whether a sync transfers the whole tree or a change, and which change: fetched from the
publisher when the announcement brought none that fits (docs/design.md#changes-a-mirror-fetches).

An announcement carries the change from the previous publish; a mirror that missed
publishes, restarted, or is synced by its poll or start-up check asks the publisher
instead: ``GET changes_url?from=LOCAL``, the URL its last verified announcement gave. The
answer counts only when its ``v1a`` signature verifies with the upstream's public key, it
names the repository the URL names, it decodes (``decode_change``: no unsafe path, at most
``max_changes`` paths), and it leads from the mirror's marker to the one just read
upstream. Anything else, a 404 (the publisher keeps no manifest of LOCAL) included, means
the whole tree: the reason is logged, never raised.
"""

from __future__ import annotations

import logging
import urllib.parse
from datetime import datetime

from mirrorhook.changes import Change, decode_change
from mirrorhook.errors import ChangeError
from mirrorhook.log import TreeLog
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import ReceiverState
from mirrorhook.signed_fetch import FetchError, fetch_signed

logger = logging.getLogger(__name__)

PATH_BYTES = 512
"""Bytes a listed path may take on average on the wire: with ``max_changes`` paths, the
most of a change that is read (and 1 MiB at least); a longer answer means the whole tree."""


def whole_due(config: ReceiverConfig, before: ReceiverState, now: float) -> bool:
    """Whether this sync must transfer the whole tree whatever change it was given: every
    ``full_sync_interval`` (0: never for that reason), so that drift cannot last."""
    if config.full_sync_interval <= 0:
        return False
    if before.last_whole is None:
        return True
    try:
        last = datetime.fromisoformat(before.last_whole).timestamp()
    except ValueError:
        return True
    return now - last >= config.full_sync_interval


def fitting(change: Change | None, local: str | None, upstream: str) -> bool:
    """Whether ``change`` leads from the mirror's marker to the upstream's now."""
    return change is not None and change.from_marker == local and change.to_marker == upstream


async def change_for(
    config: ReceiverConfig,
    offered: Change | None,
    *,
    local: str | None,
    upstream: str,
    url: str | None,
) -> Change | None:
    """The change to transfer by: ``offered`` (the announcement's) when it fits, else the
    one fetched from ``url`` when that fits, else ``None`` (the whole tree)."""
    log = TreeLog(logger, config.name)
    if fitting(offered, local, upstream):
        return offered
    if url is None or local is None or not config.public_keys:
        return None
    try:
        fetched = await fetch_change(config, url, local)
    except ChangeError as err:
        log.warning("the change from %r is not used (%s): the whole tree", local, err)
        return None
    if fetched is None:
        log.info("the publisher keeps no manifest of marker %r: the whole tree", local)
        return None
    if not fitting(fetched, local, upstream):
        log.info(
            "the fetched change leads from %r to %r, this sync from %r to %r: the whole tree",
            fetched.from_marker,
            fetched.to_marker,
            local,
            upstream,
        )
        return None
    log.info("fetched the change from %r to %r: %d paths", local, upstream, fetched.count)
    return fetched


async def fetch_change(config: ReceiverConfig, url: str, local: str) -> Change | None:
    """The verified change from ``local`` that the publisher serves at ``url``; ``None``
    for a 404; ``ChangeError`` saying why anything else is not taken."""
    limit = max(1 << 20, config.max_changes * PATH_BYTES)
    try:
        body = await fetch_signed(url, {"from": local}, config.public_keys, limit=limit)
    except FetchError as err:
        raise ChangeError(str(err)) from None
    if body is None:
        return None
    change = decode_change(body, config.max_changes)
    named = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])
    if change.repo != named:
        raise ChangeError(f"it is the change of repository {change.repo!r}, not of {named!r}")
    return change
