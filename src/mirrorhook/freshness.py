"""Which mirrors serve the newest publish: checks of each ``check_url``, and their record.

After each publish every mirror with a ``check_url`` is checked at growing intervals
(``AFTER_PUBLISH``: about 5 s, 15 s, 1 min, 5 min, 15 min) until it serves the new value,
and every ``check_interval`` otherwise. A mirror is ``fresh`` when it serves the newest
marker; else ``syncing`` (``behind`` for one without webhooks: it syncs by cron) until
``stale_after`` seconds after the first publish it does not serve, ``stale`` after that;
``unreachable`` after ``UNREACHABLE_AFTER`` failed checks in a row; ``unknown`` without a
``check_url``. The record (``freshness.json`` beside ``publisher.json``) survives restarts;
in the daemon it is written at most once per ``SAVE_DELAY`` (a round of checks of a
thousand mirrors is one write, not a thousand), every ``RETRY_WRITE`` while writing fails,
and at shutdown. It keeps the last ``ANNOUNCED_KEPT`` values announced, which the mirror
list chooses among (docs/design.md#freshness).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorhook.history import History
from mirrorhook.metrics import DeliveryMetrics, NoMetrics
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig
from mirrorhook.record import RETRY_WRITE
from mirrorhook.state import iso_time, read_json, text_or_none, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "freshness.json"
AFTER_PUBLISH = (5.0, 15.0, 60.0, 300.0, 900.0)
"""Seconds after a publish at which a mirror not yet fresh is checked again."""
UNREACHABLE_AFTER = 3
SAVE_DELAY = 1.0
"""Seconds the daemon gathers changes to the record before writing it: a crash loses at
most these, and the next checks redo them."""
ANNOUNCED_KEPT = 10
"""Values announced that the record remembers, newest last: a mirror serving one of them
serves a real publish (one serving anything else is never listed)."""


class State(enum.StrEnum):
    """Where a mirror stands with the newest publish."""

    FRESH = "fresh"
    SYNCING = "syncing"
    BEHIND = "behind"
    """A mirror without webhooks (it syncs by cron) that does not serve the newest publish
    yet, within ``stale_after`` of the first one it does not serve."""
    STALE = "stale"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Announcement:
    """A marker value the publisher announced, and when (Unix time; unknown in a record
    written by hand)."""

    value: str
    at: float | None


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
        *,
        retry_write: float = RETRY_WRITE,
    ) -> None:
        self.config = config
        self._clock = clock
        self._metrics = metrics or NoMetrics()
        self._retry_write = retry_write
        self.path = freshness_path(config)
        self.version = 0
        """Counts the record's changes: the mirror lists show a change at once by it."""
        self._history: History | None = None
        self._pushed = frozenset(mirror.name for mirror in config.mirrors if mirror.url)
        """The mirrors that get webhooks: one of them not yet fresh is syncing, not behind."""
        recorded = read_json(self.path)
        self.announced = _announcements(recorded)
        """The last ``ANNOUNCED_KEPT`` values announced, newest last."""
        mirrors = recorded.get("mirrors")
        self._unsaved = False
        self._failing = False
        self._closed = False
        self._save_soon: asyncio.TimerHandle | None = None
        self.mirrors: dict[str, dict[str, Any]] = {
            mirror.name: dict(mirrors.get(mirror.name, {}))
            if isinstance(mirrors, dict) and isinstance(mirrors.get(mirror.name), dict)
            else {}
            for mirror in config.mirrors
        }

    @property
    def history(self) -> History:
        """How the publishes spread, over the last days (``history.py``): read when first
        asked for, so that ``status`` and a stopped tree's lists never read it."""
        if self._history is None:
            self._history = History(self.config.state_dir, self._clock)
        return self._history

    @property
    def newest(self) -> str | None:
        """The marker value announced last; ``None`` before any."""
        return self.announced[-1].value if self.announced else None

    @property
    def published_at(self) -> float | None:
        """When the newest value was announced (Unix time)."""
        return self.announced[-1].at if self.announced else None

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
        # A value announced again (a rollback) moves to the end: it is the newest once more.
        earlier = [known for known in self.announced if known.value != value]
        self.announced = [*earlier, Announcement(value, self._clock())][-ANNOUNCED_KEPT:]
        self.history.published(value, self._clock())
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
        if first_lag is not None and self.newest is not None:
            self.history.fresh(mirror, self.newest, first_lag)
        self.history.checked(mirror, fresh=state is State.FRESH)
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
        _count, first = self.behind(entry.get("serving"))
        if first is not None and self._clock() - first > self.config.stale_after:
            return State.STALE
        return State.SYNCING if mirror in self._pushed else State.BEHIND

    def behind(self, serving: object) -> tuple[int, float | None]:
        """How far behind a mirror serving ``serving`` is: the publishes announced since the
        one it serves (every one kept, when it serves none of them), and when the first of
        those was announced (``None`` if unknown). Staleness counts from that first publish
        it does not serve, not from the newest: a mirror three publishes behind is stale
        however often the upstream publishes."""
        values = [known.value for known in self.announced]
        start = values.index(serving) + 1 if serving in values else 0
        missed = self.announced[start:]
        times = [known.at for known in missed if known.at is not None]
        return len(missed), (times[0] if times else None)

    def rows(self) -> list[dict[str, Any]]:
        """One entry per mirror, for status, ``/v1/mirrors``, the page and the mirror list."""
        return [self._row(mirror) for mirror in self.config.mirrors]

    def _row(self, mirror: MirrorConfig) -> dict[str, Any]:
        entry = self.mirrors[mirror.name]
        behind, first = self.behind(entry.get("serving"))
        return {
            "name": mirror.name,
            "state": str(self.state(mirror.name)),
            "serving": entry.get("serving"),
            "behind": behind,
            "behind_since": None if first is None else iso_time(first),
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
        """Write the record now if it changed (``SAVE_DELAY`` after a change, and at
        shutdown); when that fails it stays unsaved, and is tried again ``RETRY_WRITE``
        later (in the daemon) or at the next change."""
        if self._save_soon is not None:
            self._save_soon.cancel()
            self._save_soon = None
        if not self._unsaved:
            return
        document = {
            "newest": self.newest,  # also in "announced": kept for older readers
            "published_at": self.published_at,
            "announced": [dataclasses.asdict(known) for known in self.announced],
            "mirrors": self.mirrors,
        }
        # The daemon is the only writer (status reads the file; the page and the mirror list
        # read this object), and a check's result is redone by the next check: an atomic
        # rename without fsync, compact JSON, gathered over SAVE_DELAY.
        try:
            write_json(self.path, document, durable=False, compact=True)
        except OSError as err:
            if not self._failing:  # once per outage, not once per attempt
                self._failing = True
                logger.warning(
                    "cannot write %s: %s; trying again every %g s",
                    self.path,
                    err.strerror or err,
                    self._retry_write,
                )
            if not self._closed:
                self._flush_later(self._retry_write)
            return
        self._unsaved = False
        if self._failing:
            self._failing = False
            logger.info("%s written again", self.path)

    def close(self) -> None:
        """Write the record a last time (the tree stops), with no retry after it: a tree
        started in its place (a reload) writes the file from then on."""
        self._closed = True
        self.flush()
        if self._history is not None:
            self._history.flush()

    def _save(self) -> None:
        """Note a change: written at once outside an event loop, else ``SAVE_DELAY`` later
        (or at the retry of a failed write, already due)."""
        self.version += 1
        self._unsaved = True
        if self._save_soon is None and not self._flush_later(SAVE_DELAY):
            self.flush()

    def _flush_later(self, delay: float) -> bool:
        """Flush ``delay`` seconds from now; return ``False`` outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._save_soon = loop.call_later(delay, self.flush)
        return True


def _announcements(recorded: dict[str, Any]) -> list[Announcement]:
    """The values announced, from the record; one written before it kept them has the
    newest value alone."""
    kept = recorded.get("announced")
    found = [
        Announcement(item["value"], _time(item.get("at")))
        for item in (kept if isinstance(kept, list) else [])
        if isinstance(item, dict) and isinstance(item.get("value"), str)
    ]
    newest = text_or_none(recorded.get("newest"))
    if not found and newest is not None:
        found = [Announcement(newest, _time(recorded.get("published_at")))]
    return found[-ANNOUNCED_KEPT:]


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
