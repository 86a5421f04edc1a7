"""Reading a server-sent event stream (the W3C EventSource format), bounded.

``EventReader.feed`` takes bytes as they arrive and returns the complete events; a line
longer than ``max_line`` raises ``StreamError`` (the stream is then dropped and
reconnected): a hostile or broken upstream cannot grow the receiver's memory. Comment
lines (``:``) are heartbeats; fields other than ``event``, ``data``, ``id`` and ``retry``
are ignored, as the format says.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 65536
"""Bytes in one line at most: an envelope is a few hundred bytes."""


class StreamError(Exception):
    """The stream broke the format or its bounds; it is dropped."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event."""

    event: str
    data: str
    id: str | None
    """The stream's last event id after this event (it carries over, as the format says)."""


class EventReader:
    """Parses a stream incrementally; holds at most one partial line and one event."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._partial = b""
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self.last_id: str | None = None
        self.retry: int | None = None
        """The stream's ``retry:`` field in milliseconds, when it sent one."""

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes."""
        events: list[Event] = []
        buffer = self._partial + chunk
        start = 0
        while True:
            end = _line_end(buffer, start)
            if end is None:
                break
            line, start = buffer[start : end[0]], end[1]
            if len(line) > self._max_line:
                raise StreamError(f"a line longer than {self._max_line} bytes")
            if (event := self._line(line)) is not None:
                events.append(event)
        self._partial = buffer[start:]
        if len(self._partial) > self._max_line:
            raise StreamError(f"a line longer than {self._max_line} bytes")
        return events

    def _line(self, raw: bytes) -> Event | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_line:
                raise StreamError(f"an event's data longer than {self._max_line} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event or "message"
        self._data, self._event, self._data_size = [], "", 0
        if not data:
            return None
        return Event(event, "\n".join(data), self.last_id)


def _line_end(buffer: bytes, start: int) -> tuple[int, int] | None:
    """Where the line from ``start`` ends and the next begins (CRLF, LF or CR); ``None``
    when the line is not complete yet (a CR at the very end may be the start of CRLF)."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start)
    if cr != -1 and (lf == -1 or cr < lf):
        if cr + 1 == len(buffer):
            return None
        return cr, cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
    if lf != -1:
        return lf, lf + 1
    return None
