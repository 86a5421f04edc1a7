"""What made a mirror sync: a typed value that every trigger source builds and that the
scheduler, the sync engine, the state file, the trace files and the logs read.

The sources are the transports an announcement arrives by (a webhook, the upstream's event
stream, an MQTT broker) and the mirror's own clocks (the startup check, the poll, a one-shot
``mirrorhook sync``). Nothing after the intake (``intake.py``) knows more of the transport
than ``Trigger.via``: the word the trace files and ``status`` show.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mirrorhook.changes import Change


class Via(enum.StrEnum):
    """Where a trigger came from; the value is the trace files' ``Trigger:`` word."""

    WEBHOOK = "webhook"
    EVENTS = "events"
    """The upstream's server-sent event stream (``GET /v1/events``)."""
    MQTT = "mqtt"
    STARTUP = "startup check"
    POLL = "poll"
    COMMAND = "mirrorhook sync"

    @property
    def announced(self) -> bool:
        """Whether a signed announcement of the upstream brought it (not a local clock)."""
        return self in (Via.WEBHOOK, Via.EVENTS, Via.MQTT)


@dataclass(frozen=True, slots=True)
class Trigger:
    """One trigger: its source and, for an announcement, who sent it and which marker."""

    via: Via
    detail: str = ""
    """For the logs only: ``from upstream.example.org, marker '2026-12-01T10:00:00Z'``. It
    holds fields of a request, so it never reaches a trace file."""
    change: Change | None = field(default=None, compare=False)
    """The change the signed announcement carried, checked (docs/design.md#changes)."""

    @classmethod
    def announcement(
        cls, via: Via, source: str, marker: str | None, change: Change | None = None
    ) -> Trigger:
        """A trigger brought by an announcement from ``source`` naming ``marker``."""
        return cls(via, f"from {source}, marker {marker!r}", change)

    def __str__(self) -> str:
        return f"{self.via} {self.detail}" if self.detail else str(self.via)


STARTUP = Trigger(Via.STARTUP)
POLL = Trigger(Via.POLL)
COMMAND = Trigger(Via.COMMAND)
