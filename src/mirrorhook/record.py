"""The publisher's durable record: what each mirror acknowledged (``publisher.json``).

Written in batches from the event loop's side (one write covers many mirrors), atomically
and under a lock, so that ``serve`` and ``notify`` on one host never lose each other's
updates. Kept free of aiohttp so that ``mirrorhook status`` starts fast.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirrorhook.state import read_json, update_json

if TYPE_CHECKING:
    from mirrorhook.publisher_config import PublisherConfig

logger = logging.getLogger(__name__)

STATE_NAME = "publisher.json"
FLUSH_INTERVAL = 0.5
"""Seconds between writes of the record: one write covers many mirrors."""
RETRY_WRITE = 10.0
"""Seconds before a failed write (disk full, say) is tried again; deliveries go on."""

Fields = dict[str, dict[str, Any]]


class DeliveryResult(enum.StrEnum):
    """Where a mirror stands with the newest marker."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    GONE = "gone"
    FAILED = "failed"
    SUPERSEDED = "superseded"


def publisher_state_path(config: PublisherConfig) -> Path:
    """Return the publisher's delivery record."""
    return config.state_dir / STATE_NAME


class DeliveryLog:
    """The per-mirror record; ``note`` changes it, ``run`` or ``flush`` writes it, ``known``
    shows it as this process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: Fields = {}
        self._known: Fields = {}
        """The record as ``load`` read it, with every change noted since (written or not)."""
        self._dirty = asyncio.Event()

    def load(self) -> Fields:
        """Read the record and hold it (the running publisher does, at its start, before it
        notes anything): ``known`` then shows it without reading the file again."""
        recorded = self.mirrors()
        self._known = {name: dict(entry) for name, entry in recorded.items()}
        return recorded

    def known(self) -> Fields:
        """Each mirror's entry as this process holds it (see ``load``): a copy, which another
        thread may read while deliveries go on noting changes."""
        return {name: dict(entry) for name, entry in self._known.items()}

    def mirrors(self) -> Fields:
        """Return the record as last written, per mirror name."""
        recorded = read_json(self.path).get("mirrors")
        if not isinstance(recorded, dict):
            return {}
        return {name: entry for name, entry in recorded.items() if isinstance(entry, dict)}

    def note(self, mirror: str, **fields: Any) -> None:
        """Record ``fields`` for ``mirror``; they reach the disk at the next flush."""
        self._pending.setdefault(mirror, {}).update(fields)
        self._known.setdefault(mirror, {}).update(fields)
        self._dirty.set()

    def delivered(self, mirror: str, value: str, at: str, **fields: Any) -> None:
        """Note that ``mirror`` accepted ``value`` at ``at`` (with ``fields``): while ``value``
        is the one it last accepted, ``delivered_at`` stays the first time it did, so that a
        redelivery (``notify`` after the daemon, say) does not move the page's timeline."""
        known = self._known.get(mirror, {})
        first = known.get("delivered_at") if known.get("delivered") == value else None
        self.note(mirror, delivered=value, delivered_at=first or at, **fields)

    def flush(self) -> None:
        """Write the pending changes now (from the event loop's thread)."""
        self._write(self._take())

    async def run(self) -> None:
        """Write changes in the background until cancelled, then a last time."""
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                pending = self._take()  # taken on the loop's thread, written in another
                try:
                    await asyncio.to_thread(self._write, pending)
                except asyncio.CancelledError:
                    # The thread's write goes on, unseen; the last flush below writes the
                    # same changes again (merging is idempotent; the file lock orders the
                    # two), so that once this task is done, they are on disk.
                    self._give_back(pending)
                    raise
                except OSError as err:
                    self._give_back(pending)
                    logger.error(
                        "cannot write %s: %s; retrying in %g s", self.path, err, RETRY_WRITE
                    )
                    await asyncio.sleep(RETRY_WRITE)
                    self._dirty.set()
                    continue
                await asyncio.sleep(FLUSH_INTERVAL)
        finally:
            try:
                self.flush()
            except OSError as err:
                logger.error("cannot write %s: %s", self.path, err)

    def _take(self) -> Fields:
        pending, self._pending = self._pending, {}
        return pending

    def _give_back(self, pending: Fields) -> None:
        for name, fields in pending.items():
            self._pending[name] = {**fields, **self._pending.get(name, {})}

    def _write(self, pending: Fields) -> None:
        if not pending:
            return

        def merge(document: dict[str, Any]) -> None:
            # A record of the wrong shape (edited by hand, say) is replaced, not trusted.
            mirrors = document.get("mirrors")
            if not isinstance(mirrors, dict):
                mirrors = document["mirrors"] = {}
            for name, fields in pending.items():
                entry = mirrors.get(name)
                mirrors[name] = {**(entry if isinstance(entry, dict) else {}), **fields}

        update_json(self.path, merge)
