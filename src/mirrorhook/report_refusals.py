"""The mirrors' reports that the publisher refused: how many, and the last one's time,
answer, reason and sender — per repository when the report named one the publisher has,
else for the whole publisher (in the single form, its one tree).

A mirror whose reports are refused (its secret is not the one the upstream holds, it
reports under a name the upstream does not know) otherwise shows only in the log, at most
once a minute. The report desk notes each refusal here; the page reads this record from
memory, ``mirrorhook status`` and ``/v1/status`` from ``state_dir/refused_reports.json``,
which is written at most once per ``SAVE_DELAY`` however many reports are refused, and
stays small: one entry per repository. Nothing in it is a secret: the reason is one of
the desk's own phrases, the sender an address (docs/design.md#freshness).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mirrorhook.state import iso_time, read_json, text_or_none, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "refused_reports.json"
SAVE_DELAY = 1.0
"""Seconds the refusals are gathered before the record is written."""
OVERALL = "overall"

Repo = str | None
"""A repository of the host form; ``None``: none known (the single form's tree)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The reports refused for one repository (or with none known): how many, and the last."""

    count: int
    at: float
    """When the last one was refused (Unix time)."""
    status: int
    reason: str
    peer: str
    """Where the last one came from (an address)."""
    mirror: str | None = None
    """The mirror the last one named, when the publisher has one of that name."""

    def as_json(self) -> dict[str, Any]:
        """What ``status --json`` and ``/v1/status`` show (and the record keeps)."""
        return {
            "count": self.count,
            "last_at": iso_time(self.at),
            "last_status": self.status,
            "last_reason": self.reason,
            "last_peer": self.peer,
            "last_mirror": self.mirror,
        }

    @classmethod
    def of(cls, value: object) -> Refused | None:
        """An entry as ``as_json`` wrote it; ``None`` for anything else."""
        if not isinstance(value, dict):
            return None
        count, status, at = value.get("count"), value.get("last_status"), value.get("last_at")
        reason, peer = text_or_none(value.get("last_reason")), text_or_none(value.get("last_peer"))
        if not (isinstance(count, int) and isinstance(status, int) and isinstance(at, str)):
            return None
        try:
            when = datetime.fromisoformat(at).timestamp()
        except ValueError:
            return None
        mirror = text_or_none(value.get("last_mirror"))
        return cls(count, when, status, reason or "", peer or "", mirror)


def read_refused(state_dir: Path) -> dict[Repo, Refused]:
    """The record in the publisher's ``state_dir``, by repository (``None``: none known)."""
    recorded = read_json(state_dir / STATE_NAME)
    repos = recorded.get("repos")
    found: dict[Repo, Refused] = {}
    for name, value in repos.items() if isinstance(repos, dict) else ():
        if (entry := Refused.of(value)) is not None:
            found[str(name)] = entry
    if (entry := Refused.of(recorded.get(OVERALL))) is not None:
        found[None] = entry
    return found


def as_json(refused: Refused | None) -> dict[str, Any] | None:
    """An entry for ``status --json`` (``None`` when nothing was refused)."""
    return None if refused is None else refused.as_json()


class RefusedReports:
    """The record the report desk keeps: in memory, and written ``SAVE_DELAY`` after a change."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / STATE_NAME
        self._clock = clock
        self._by_repo = read_refused(state_dir)
        self._save_soon: asyncio.TimerHandle | None = None
        self._unsaved = False

    def refused(
        self, repo: Repo, peer: str, status: int, reason: str, mirror: str | None = None
    ) -> None:
        """Note one refused report (``repo``: the repository it named, if the publisher has it)."""
        before = self._by_repo.get(repo)
        count = 1 if before is None else before.count + 1
        self._by_repo[repo] = Refused(count, self._clock(), status, reason, peer, mirror)
        self._unsaved = True
        if self._save_soon is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._save_soon = loop.call_later(SAVE_DELAY, self.flush)

    def snapshot(self) -> dict[Repo, Refused]:
        """A copy, by repository (its entries are frozen)."""
        return dict(self._by_repo)

    def flush(self) -> None:
        """Write the record now if it changed (``SAVE_DELAY`` after a change, and at
        shutdown). A small file written without fsync: a crash loses a second of counts."""
        if self._save_soon is not None:
            self._save_soon.cancel()
            self._save_soon = None
        if not self._unsaved:
            return
        document: dict[str, Any] = {
            "repos": {name: e.as_json() for name, e in self._by_repo.items() if name is not None}
        }
        if None in self._by_repo:
            document[OVERALL] = self._by_repo[None].as_json()
        try:
            write_json(self.path, document, durable=False)
        except OSError as err:
            logger.warning("cannot write %s: %s", self.path, err.strerror or err)
            return
        self._unsaved = False
