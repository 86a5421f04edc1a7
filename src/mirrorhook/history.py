"""How publishes spread, over the last ``DAYS`` days: per publish, how long after it each
mirror was first seen serving it; per mirror, a score like Arch's mirror status (the share
of its checks that found it fresh, and its mean delay).

Kept in ``history.json`` beside the freshness record, bounded in size: publishes older than
``DAYS`` days are dropped, and at most ``MAX_PUBLISHES`` are kept, with ``MAX_DELAYS``
mirror delays in all; each mirror's checks are counted in one bucket a day. Served as
``/v1/history`` for aggregators and drawn on the page as a propagation curve with each
mirror's score beside it, which running totals keep at a cost of one step per mirror
(docs/design.md#history).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorhook.state import read_json, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "history.json"
DAYS = 30
DAY = 86400.0
MAX_PUBLISHES = 2000
"""Publishes kept at most (about one every 20 minutes for 30 days)."""
MAX_DELAYS = 200_000
"""Mirror delays kept at most, all publishes together (a few MB of JSON): with a thousand
mirrors, the last 200 publishes rather than 2,000 (the file is rewritten every few
seconds, off the loop, and must stay small)."""
SAVE_DELAY = 5.0
"""Seconds changes are gathered before the record is written: a crash loses these only."""


@dataclass(frozen=True, slots=True)
class Score:
    """A mirror's record over the days kept."""

    checks: int
    fresh_checks: int
    mean_delay: float | None
    """Mean seconds from a publish to the mirror first seen serving it, over the publishes
    it was seen serving."""

    @property
    def share_fresh(self) -> float | None:
        return None if not self.checks else self.fresh_checks / self.checks


class History:
    """One tree's publishes and its mirrors' checks, kept for ``DAYS`` days."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / STATE_NAME
        self._clock = clock
        recorded = read_json(self.path)
        self._publishes: list[dict[str, Any]] = [
            entry
            for entry in recorded.get("publishes", [])
            if isinstance(entry, dict)
            and isinstance(entry.get("value"), str)
            and isinstance(entry.get("at"), int | float)
            and isinstance(entry.get("fresh"), dict)
        ][-MAX_PUBLISHES:]
        checks = recorded.get("checks")
        self._checks: dict[str, dict[str, list[int]]] = {
            name: {day: counts for day, counts in days.items() if _counts(counts)}
            for name, days in (checks.items() if isinstance(checks, dict) else ())
            if isinstance(name, str) and isinstance(days, dict)
        }
        self._save_soon: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._unsaved = False
        # Running totals of what is kept, per mirror, so that scoring every mirror for the
        # page costs one step each: [sum of delays, their count] and [checks, fresh ones].
        self._delays: dict[str, list[float]] = {}
        for entry in self._publishes:
            self._add_delays(entry, 1)
        self._counted: dict[str, list[int]] = {
            name: [sum(day[0] for day in days.values()), sum(day[1] for day in days.values())]
            for name, days in self._checks.items()
        }

    def published(self, value: str, at: float) -> None:
        """A new marker was announced at ``at``."""
        self._publishes.append({"value": value, "at": at, "fresh": {}})
        self._trim()
        self._changed()

    def fresh(self, mirror: str, value: str, lag: float) -> None:
        """``mirror`` was first seen serving ``value``, ``lag`` seconds after its publish."""
        for entry in reversed(self._publishes):
            if entry["value"] == value:
                if mirror not in entry["fresh"]:
                    entry["fresh"][mirror] = round(lag, 3)
                    self._add_delays({"fresh": {mirror: entry["fresh"][mirror]}}, 1)
                    self._changed()
                return

    def checked(self, mirror: str, *, fresh: bool) -> None:
        """A check of ``mirror`` found it fresh or not (counted in today's bucket)."""
        day = str(int(self._clock() // DAY))
        counts = self._checks.setdefault(mirror, {}).setdefault(day, [0, 0])
        total = self._counted.setdefault(mirror, [0, 0])
        for kept in (counts, total):
            kept[0] += 1
            kept[1] += int(fresh)
        self._changed()

    def publishes(self, last: int | None = None) -> list[dict[str, Any]]:
        """The publishes kept (only the ``last`` ones, when given), oldest first: value,
        time, and each mirror's delay; a copy."""
        self._trim()
        kept = self._publishes if last is None else self._publishes[-last:]
        return [{"value": e["value"], "at": e["at"], "fresh": dict(e["fresh"])} for e in kept]

    def record(self) -> dict[str, Any]:
        """A copy of the record (``publishes`` and ``checks``), made of C-level copies:
        cheap on the event loop, for a thread to write or to ``document`` while checks go on."""
        publishes = self.publishes()  # trimmed first: the checks copied are those kept
        checks = {
            name: {day: list(counts) for day, counts in days.items()}
            for name, days in self._checks.items()
        }
        return {"publishes": publishes, "checks": checks}

    def score(self, mirror: str) -> Score:
        """``mirror``'s checks and delays over the days kept."""
        return self.scores([mirror])[mirror]

    def scores(self, mirrors: Iterable[str]) -> dict[str, Score]:
        """Each of ``mirrors``' score over the days kept, from the running totals: one step
        per mirror (the page asks every second), equal to ``scores(self.record(), ...)``."""
        self._trim()
        found = {}
        for name in mirrors:
            checks, fresh = self._counted.get(name, (0, 0))
            total, count = self._delays.get(name, (0.0, 0))
            mean = round(total / count, 3) if count else None
            found[name] = Score(checks=checks, fresh_checks=fresh, mean_delay=mean)
        return found

    def flush(self) -> None:
        """Write the record now if it changed (at shutdown)."""
        if self._save_soon is not None:
            self._save_soon.cancel()
            self._save_soon = None
        if self._unsaved:
            self._unsaved = False
            try:
                write_json(self.path, self.record(), durable=False, compact=True)
            except OSError as err:
                self._unsaved = True
                logger.warning("cannot write %s: %s", self.path, err.strerror)

    def _trim(self) -> None:
        cutoff = self._clock() - DAYS * DAY
        first_day = int(cutoff // DAY)
        delays = sum(len(entry["fresh"]) for entry in self._publishes)
        while self._publishes and (
            self._publishes[0]["at"] < cutoff
            or len(self._publishes) > MAX_PUBLISHES
            or delays > MAX_DELAYS
        ):
            dropped = self._publishes.pop(0)
            delays -= len(dropped["fresh"])
            self._add_delays(dropped, -1)
        for name, days in self._checks.items():
            for day in [day for day in days if not day.isdigit() or int(day) < first_day]:
                total = self._counted[name]
                total[0] -= days[day][0]
                total[1] -= days[day][1]
                del days[day]

    def _add_delays(self, entry: dict[str, Any], sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) a publish's delays from the running totals."""
        for name, lag in entry["fresh"].items():
            total = self._delays.setdefault(name, [0.0, 0])
            total[0] += sign * lag
            total[1] += sign
            if not total[1]:
                del self._delays[name]  # nothing kept: no rounding residue left behind

    def _changed(self) -> None:
        """Note a change: written at once outside an event loop, else ``SAVE_DELAY`` later,
        off the loop."""
        self._unsaved = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._save_soon is None:
            self._save_soon = loop.call_later(SAVE_DELAY, self._write_soon)

    def _write_soon(self) -> None:
        self._save_soon = None
        if self._writing is not None and not self._writing.done():
            self._changed()  # a write is running: the next one follows it
            return
        document, self._unsaved = self.record(), False
        self._writing = asyncio.create_task(self._write(document))

    async def _write(self, document: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(write_json, self.path, document, durable=False, compact=True)
        except OSError as err:
            logger.warning("cannot write %s: %s", self.path, err.strerror)
            self._changed()  # tried again SAVE_DELAY later


def _counts(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(n, int) and n >= 0 for n in value)
    )


def scores(record: dict[str, Any], mirrors: Iterable[str]) -> dict[str, Score]:
    """Each of ``mirrors``' score from a ``History.record``, in one pass over its delays."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for entry in record["publishes"]:
        for name, lag in entry["fresh"].items():
            sums[name] = sums.get(name, 0.0) + lag
            counts[name] = counts.get(name, 0) + 1
    found = {}
    for name in mirrors:
        days = record["checks"].get(name, {}).values()
        count = counts.get(name, 0)
        found[name] = Score(
            checks=sum(day[0] for day in days),
            fresh_checks=sum(day[1] for day in days),
            mean_delay=round(sums[name] / count, 3) if count else None,
        )
    return found


def document(record: dict[str, Any], mirrors: Iterable[str]) -> dict[str, Any]:
    """What ``/v1/history`` answers for a tree, from a ``History.record`` (in a thread)."""
    shown = {
        name: {
            "checks": score.checks,
            "fresh_checks": score.fresh_checks,
            "share_fresh": score.share_fresh,
            "mean_delay": score.mean_delay,
        }
        for name, score in scores(record, mirrors).items()
    }
    return {"days": DAYS, "publishes": record["publishes"], "mirrors": shown}
