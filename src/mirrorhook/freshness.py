"""Which mirrors serve the newest publish: checks of each ``check_url``, and their record.

After each publish every mirror with a ``check_url`` is checked at growing intervals
(``AFTER_PUBLISH``: about 5 s, 15 s, 1 min, 5 min, 15 min) until it serves the new value,
and every ``check_interval`` otherwise. A mirror is ``fresh`` when it serves the newest
marker, ``syncing`` until ``stale_after`` seconds after the publish, ``stale`` after that,
``unreachable`` after ``UNREACHABLE_AFTER`` failed checks in a row, ``unknown`` without a
``check_url``. The record (``freshness.json`` beside ``publisher.json``) survives restarts;
in the daemon it is written at most once per ``SAVE_DELAY`` (a round of checks of a
thousand mirrors is one write, not a thousand) and at shutdown (docs/design.md#freshness).
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorhook.metrics import DeliveryMetrics, NoMetrics
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig
from mirrorhook.state import iso_time, read_json, text_or_none, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "freshness.json"
AFTER_PUBLISH = (5.0, 15.0, 60.0, 300.0, 900.0)
"""Seconds after a publish at which a mirror not yet fresh is checked again."""
UNREACHABLE_AFTER = 3
SAVE_DELAY = 1.0
"""Seconds the daemon gathers changes to the record before writing it: a crash loses at
most these, and the next checks redo them."""


class State(enum.StrEnum):
    """Where a mirror stands with the newest publish."""

    FRESH = "fresh"
    SYNCING = "syncing"
    STALE = "stale"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


def freshness_path(config: PublisherConfig) -> Path:
    """The tree's freshness record, beside its delivery record."""
    return config.state_dir / STATE_NAME


class Freshness:
    """The upstream's view of its mirrors for one tree, kept in ``freshness.json``."""

    def __init__(
        self,
        config: PublisherConfig,
        clock: Callable[[], float] = time.time,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._metrics = metrics or NoMetrics()
        self.path = freshness_path(config)
        recorded = read_json(self.path)
        self.newest: str | None = text_or_none(recorded.get("newest"))
        published = recorded.get("published_at")
        self.published_at = float(published) if isinstance(published, int | float) else None
        mirrors = recorded.get("mirrors")
        self._unsaved = False
        self._save_soon: asyncio.TimerHandle | None = None
        self.mirrors: dict[str, dict[str, Any]] = {
            mirror.name: dict(mirrors.get(mirror.name, {}))
            if isinstance(mirrors, dict) and isinstance(mirrors.get(mirror.name), dict)
            else {}
            for mirror in config.mirrors
        }

    def snapshot(self) -> Freshness:
        """A copy to read elsewhere (the page renders in a worker thread) while checks go
        on changing this one: its entries copied, nothing of it ever saved."""
        copied = copy.copy(self)
        copied.mirrors = {name: dict(entry) for name, entry in self.mirrors.items()}
        copied._unsaved, copied._save_soon = False, None
        return copied

    def published(self, value: str) -> bool:
        """A marker was announced: when it is new, mirrors not serving it start ``syncing``.
        Return whether it was new (the watcher announces the same value at every rescan)."""
        if value == self.newest:
            return False
        self.newest, self.published_at = value, self._clock()
        self._save()
        return True

    def since_publish(self) -> float | None:
        """Seconds since the newest publish was seen (it may predate a restart); ``None``
        before any."""
        return None if self.published_at is None else self._clock() - self.published_at

    def observed(self, mirror: str, value: str | None, error: str | None) -> State:
        """Record one check of ``mirror``: what it serves, or why the check failed."""
        entry = self.mirrors.setdefault(mirror, {})
        now = self._clock()
        first_lag = None
        entry["last_check"] = iso_time(now)
        entry["error"] = error
        if error is not None:
            entry["failures"] = int(entry.get("failures") or 0) + 1
        else:
            entry["failures"] = 0
            if value != entry.get("serving"):
                entry["serving"], entry["since"] = value, iso_time(now)
            first_seen = value == self.newest and entry.get("fresh_for") != self.newest
            if first_seen and self.published_at is not None:
                entry["fresh_for"] = self.newest
                entry["lag"] = first_lag = round(max(0.0, now - self.published_at), 3)
        self._save()
        state = self.state(mirror)
        self._metrics.mirror_checked(mirror, fresh=state is State.FRESH, first_lag=first_lag)
        return state

    def reported(self, mirror: str, value: str | None) -> None:
        """Note a verified report from ``mirror``: when it came and the value it claims
        (shown on the publish's timeline; the state follows checks, never claims)."""
        entry = self.mirrors.setdefault(mirror, {})
        entry["reported"], entry["reported_at"] = value, iso_time(self._clock())
        self._save()

    def state(self, mirror: str) -> State:
        """The mirror's state now (it turns ``stale`` with time alone)."""
        entry = self.mirrors.get(mirror, {})
        if "last_check" not in entry:  # never checked, nor reported (without check_url)
            return State.UNKNOWN
        if int(entry.get("failures") or 0) >= UNREACHABLE_AFTER:
            return State.UNREACHABLE
        if self.newest is None or entry.get("serving") == self.newest:
            return State.FRESH
        since_publish = self._clock() - (self.published_at or 0.0)
        return State.SYNCING if since_publish <= self.config.stale_after else State.STALE

    def rows(self) -> list[dict[str, Any]]:
        """One entry per mirror, for status, ``/v1/mirrors``, the page and the mirror list."""
        return [self._row(mirror) for mirror in self.config.mirrors]

    def _row(self, mirror: MirrorConfig) -> dict[str, Any]:
        entry = self.mirrors[mirror.name]
        return {
            "name": mirror.name,
            "state": str(self.state(mirror.name)),
            "serving": entry.get("serving"),
            "since": entry.get("since"),
            "lag": entry.get("lag") if entry.get("fresh_for") == self.newest else None,
            "last_check": entry.get("last_check"),
            "error": entry.get("error"),
            "reported": entry.get("reported"),
            "reported_at": entry.get("reported_at"),
            "urls": list(mirror.urls),
            "check_url": mirror.check_url,
        }

    def flush(self) -> None:
        """Write the record now if it changed (at shutdown, and ``SAVE_DELAY`` after a change)."""
        if self._save_soon is not None:
            self._save_soon.cancel()
            self._save_soon = None
        if not self._unsaved:
            return
        self._unsaved = False
        document = {
            "newest": self.newest,
            "published_at": self.published_at,
            "mirrors": self.mirrors,
        }
        # The daemon is the only writer (status reads the file; the page and the mirror list
        # read this object), and a check's result is redone by the next check: an atomic
        # rename without fsync, compact JSON, gathered over SAVE_DELAY.
        try:
            write_json(self.path, document, durable=False, compact=True)
        except OSError as err:
            logger.warning("cannot write %s: %s", self.path, err.strerror)

    def _save(self) -> None:
        """Note a change: written at once outside an event loop, else ``SAVE_DELAY`` later."""
        self._unsaved = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._save_soon is None:
            self._save_soon = loop.call_later(SAVE_DELAY, self.flush)
