"""The publisher's public answers — the page, the mirror lists, the status, the metrics —
rendered at most once a second, off the event loop, whoever asks and however often.

Anyone may fetch them, as often as they like, and for a thousand mirrors one rendering
takes from a few to tens of milliseconds of pure Python: done per request on the event
loop, twenty clients in a loop would starve the deliveries, the checks and ``/healthz``. So
each answer is rendered from a snapshot taken on the loop (references and shallow copies,
well under a millisecond), in a worker thread, and kept for ``MAX_AGE``: every request in
that second gets the same bytes (gzipped once, for the clients that accept it), and the
requests that arrive during a rendering wait for that one (docs/design.md#freshness). What
an answer shows is thus at most ``MAX_AGE`` old, a reload's changes included.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web

MAX_AGE = 1.0
"""Seconds an answer is served as rendered before it is rendered again."""
GZIP_LEVEL = 6

Key = TypeVar("Key", bound=Hashable)
Snapshot = TypeVar("Snapshot")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Body:
    """A rendered answer's bytes, plain and gzipped."""

    data: bytes
    gzipped: bytes

    @classmethod
    def of(cls, data: bytes) -> Body:
        """``data`` and its gzipped copy (made where the rendering runs, not on the loop)."""
        return cls(data, gzip.compress(data, GZIP_LEVEL, mtime=0))

    def response(
        self,
        request: web.Request,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """The answer to ``request``: gzipped when the client accepts gzip."""
        every = {"Content-Type": content_type, "Vary": "Accept-Encoding", **(headers or {})}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            return web.Response(body=self.gzipped, headers={**every, "Content-Encoding": "gzip"})
        return web.Response(body=self.data, headers=every)


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip;q=0`` refuses it)."""
    for item in header.split(","):
        coding, _, parameters = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        quality = parameters.strip().lower().removeprefix("q=")
        try:
            return not parameters or float(quality) > 0
        except ValueError:
            return False
    return False


class ResponseCache(Generic[Key, Snapshot, Result]):
    """Answers rendered by ``render`` in a worker thread, at most once per ``max_age`` per
    key; ``renders`` counts the renderings (for tests and benchmarks)."""

    def __init__(
        self,
        render: Callable[[Snapshot], Result],
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render = render
        self._max_age = max_age
        self._clock = clock
        self._done: dict[Key, tuple[float, object, Result]] = {}
        self._rendering: dict[Key, asyncio.Task[Result]] = {}
        self.renders = 0

    async def get(
        self, key: Key, snapshot: Callable[[], Snapshot], *, version: object = None
    ) -> Result:
        """The answer for ``key``: the one rendered less than ``max_age`` ago from data of
        this ``version`` (when the caller has one: a change then shows at once, renderings
        still one at a time), else the one being rendered, else a new one rendered from
        ``snapshot()`` (called here, on the loop). A request that goes away leaves the
        rendering to the others."""
        now = self._clock()
        done = self._done.get(key)
        if done is not None and now - done[0] < self._max_age and done[1] == version:
            return done[2]
        task = self._rendering.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(key, snapshot(), now, version))
            task.add_done_callback(_retrieve)
            self._rendering[key] = task
        return await asyncio.shield(task)

    async def _refresh(self, key: Key, taken: Snapshot, at: float, version: object) -> Result:
        try:
            result = await asyncio.to_thread(self._render, taken)
        finally:
            self._rendering.pop(key, None)
        self.renders += 1
        # Only the keys asked for within the last max_age stay: a key costs nothing to
        # render again, and stale keys (a repository removed by a reload) go.
        self._done = {k: v for k, v in self._done.items() if at - v[0] < self._max_age}
        self._done[key] = (at, version, result)
        return result


def _retrieve(task: asyncio.Task[object]) -> None:
    """Take a rendering's error even when every request that waited for it went away
    (asyncio would log it as never retrieved); those that waited got it."""
    if not task.cancelled():
        task.exception()
