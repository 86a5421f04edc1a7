"""Reading what a mirror serves: its copy of the marker at ``check_url``, as a user would.

One GET, bounded every way a hostile or broken mirror could stretch it: a deadline, at most
``MAX_BODY`` bytes read (however the answer is split on the wire), at most ``MAX_REDIRECTS``
redirects followed (never from https to http, and off the ``check_url``'s origin only to
public addresses), and the answer must be a marker by the rules of ``marker.py``
(docs/design.md#freshness, docs/design.md#where-a-check-may-be-redirected). Whatever goes
wrong is a ``CheckError`` with a one-line reason; nothing else is raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from collections.abc import Callable

import aiohttp
from yarl import URL

from mirrorhook import bodies, marker
from mirrorhook.errors import MarkerError, MirrorhookError
from mirrorhook.freshness import AFTER_PUBLISH, Freshness, State
from mirrorhook.log import TreeLog
from mirrorhook.public_addresses import REFUSED, NotPublicError, is_public_host
from mirrorhook.publisher_config import MirrorConfig

logger = logging.getLogger(__name__)

MAX_BODY = 4096
"""Bytes of a mirror's answer read at most: a marker is a short line."""
MAX_REDIRECTS = 3
CHECK_TIMEOUT = 10.0
"""Seconds one check may take, redirects included."""
CHECK_CONCURRENCY = 16
"""Checks in flight at once: their own bound, so that they never hold up deliveries."""


class CheckError(MirrorhookError):
    """What a mirror's ``check_url`` did not give: a reason in a few words."""


async def serving(
    session: aiohttp.ClientSession,
    url: str,
    *,
    public: aiohttp.ClientSession,
    timeout: float = CHECK_TIMEOUT,
) -> str:
    """Return the marker value ``url`` serves; raise ``CheckError`` saying why not.

    ``session`` fetches ``url`` and redirects within its origin, ``public`` (a
    ``public_session``) redirects elsewhere."""
    try:
        async with asyncio.timeout(timeout):
            return await _follow(session, public, url)
    except TimeoutError:
        raise CheckError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as err:
        if isinstance(err.os_error, NotPublicError):
            raise CheckError(REFUSED) from None
        reason = os.strerror(err.errno) if err.errno else str(err.os_error)
        raise CheckError(f"cannot connect to {err.host}:{err.port}: {reason}"[:200]) from None
    except aiohttp.ClientError as err:
        raise CheckError(f"{type(err).__name__}: {err}"[:200]) from None
    except OSError as err:
        raise CheckError(err.strerror or str(err)) from None


async def _follow(session: aiohttp.ClientSession, public: aiohttp.ClientSession, url: str) -> str:
    try:
        target = URL(url)
    except ValueError:
        raise CheckError("check_url is not a URL that can be read") from None
    home = origin(target)
    for _hop in range(MAX_REDIRECTS + 1):
        fetcher = session
        if origin(target) != home:
            # Decided before any connection, the same whatever listens there: an address
            # here, a name in the public session's resolver.
            if not target.raw_host or is_public_host(target.raw_host) is False:
                raise CheckError(REFUSED)
            fetcher = public
        # The URL judged is the one fetched: a second parse could read another host.
        async with fetcher.get(target, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                target = _next(target, response.headers.get("Location", ""))
                continue
            if response.status != 200:
                raise CheckError(f"HTTP {response.status}")
            try:
                data = await bodies.read_stream(response.content, MAX_BODY)
            except bodies.TooLargeError:
                raise CheckError(
                    f"does not serve a marker: it is larger than {MAX_BODY} bytes"
                ) from None
        try:
            value = marker.value_of(data, str(target))
        except MarkerError as err:
            raise CheckError(f"does not serve a marker: {err.reason}") from None
        if not value:
            raise CheckError("serves an empty marker")
        return value
    raise CheckError(f"more than {MAX_REDIRECTS} redirects")


def origin(url: URL) -> tuple[str, str | None, int | None]:
    """A URL's origin: scheme, host and port (yarl fills in the scheme's default port)."""
    return url.scheme, url.raw_host, url.port


def _next(url: URL, location: str) -> URL:
    """The redirect's target, refused when it leaves https or is no http(s) URL."""
    try:
        target = URL(urllib.parse.urljoin(str(url), location))
    except ValueError:
        raise CheckError("redirected to a URL that cannot be read") from None
    if target.scheme not in ("http", "https"):
        raise CheckError("redirected to a URL that is not http(s)")
    if url.scheme == "https" and target.scheme == "http":
        raise CheckError("redirected from https to http (not followed)")
    return target


class Checker:
    """Checks every mirror of a tree that has a ``check_url``, on the schedule above and
    whenever a report asks, fairly across mirrors whatever one of them sends.

    A mirror has at most one check running and one queued to follow it: asking while one is
    queued joins that one (it has not read the mirror yet, so it answers the new request
    too), whether the schedule or a report asks. The queued check waits for its turn at the
    ``CHECK_CONCURRENCY`` slots only once the running one is done, so each mirror holds at
    most one place in that queue, served first come first served (asyncio's semaphore is
    FIFO): a flood of reports from one mirror costs one check at a time, and the others'
    scheduled checks wait behind at most one check of each mirror (docs/design.md#freshness).
    """

    def __init__(
        self,
        freshness: Freshness,
        session: aiohttp.ClientSession,
        *,
        public: aiohttp.ClientSession,
        after_publish: tuple[float, ...] = AFTER_PUBLISH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``session`` fetches each ``check_url`` and redirects within its origin; ``public``
        (a ``public_session``) fetches redirects elsewhere; ``clock`` says when the next
        scheduled checks are due (``next_checks``)."""
        self.freshness = freshness
        self._log = TreeLog(logger, freshness.config.repo)
        self.mirrors = tuple(mirror for mirror in freshness.config.mirrors if mirror.check_url)
        """The mirrors there is something to check of: those with a ``check_url``."""
        self._session = session
        self._public = public
        self._after_publish = after_publish
        self._slots = asyncio.Semaphore(CHECK_CONCURRENCY)
        self._woken = {mirror.name: asyncio.Event() for mirror in self.mirrors}
        self._running: dict[str, asyncio.Task[State]] = {}
        self._queued: dict[str, asyncio.Task[State]] = {}
        self._checks: set[asyncio.Task[State]] = set()
        """Every check running or queued: at most two per mirror."""
        self._clock = clock
        self._due: dict[str, float] = {}
        """When each mirror's next scheduled check is due (Unix time)."""

    def published(self, value: str) -> None:
        """A new marker starts each mirror's schedule of checks after a publish; the same
        value again (a rescan, a restart) changes nothing."""
        if not self.freshness.published(value):
            return
        for event in self._woken.values():
            event.set()

    async def run(self) -> None:
        """Check every mirror on its schedule until cancelled; then end the checks reports
        asked for, so that none records after the tree's last write of its record."""
        try:
            async with asyncio.TaskGroup() as group:
                for mirror in self.mirrors:
                    group.create_task(self._watch(mirror), name=f"check {mirror.name}")
        finally:
            for task in self._checks:
                task.cancel("the tree stops")
            await asyncio.gather(*self._checks, return_exceptions=True)

    async def check(self, mirror: MirrorConfig) -> State:
        """Check ``mirror`` and record what it serves: the check queued for it if there is
        one, else a new one (after the running one, if any)."""
        # Shielded: a caller that stops waiting leaves the check to the others it answers.
        return await asyncio.shield(self._queue(mirror))

    def check_soon(self, mirror: MirrorConfig) -> None:
        """Check ``mirror`` in the background (a report asks), as ``check`` would."""
        self._queue(mirror)

    def in_line(self, mirror: str) -> int:
        """The checks of ``mirror`` running or queued now: 0, 1 or 2, whatever was asked."""
        return (mirror in self._running) + (mirror in self._queued)

    def next_checks(self) -> dict[str, float | None]:
        """When each mirror's next check is due on its schedule (Unix time; a report may
        ask for one sooner), ``None`` for one being checked now (a copy, for the page)."""
        due: dict[str, float | None] = dict(self._due)
        due.update((name, None) for name in (*self._running, *self._queued))
        return due

    def _queue(self, mirror: MirrorConfig) -> asyncio.Task[State]:
        name = mirror.name
        queued = self._queued.get(name)
        if queued is None:
            queued = self._queued[name] = asyncio.create_task(self._check(mirror))
            self._checks.add(queued)
            queued.add_done_callback(lambda task: self._done(name, task))
        return queued

    def _done(self, name: str, task: asyncio.Task[State]) -> None:
        self._checks.discard(task)
        if self._queued.get(name) is task:  # cancelled before its turn
            del self._queued[name]

    async def _check(self, mirror: MirrorConfig) -> State:
        assert mirror.check_url is not None  # noqa: S101 - only such mirrors are checked
        running = self._running.get(mirror.name)
        if running is not None:
            # What was asked may postdate the running check's read: read again, after it.
            await asyncio.wait([running])
        async with self._slots:
            self._running[mirror.name] = self._queued.pop(mirror.name)
            try:
                value: str | None = await serving(
                    self._session, mirror.check_url, public=self._public
                )
                error = None
            except CheckError as err:
                value, error = None, str(err)
            finally:
                del self._running[mirror.name]
        state = self.freshness.observed(mirror.name, value, error)
        if error is not None:
            self._log.info("check of %s failed: %s", mirror.name, error)
        return state

    async def _watch(self, mirror: MirrorConfig) -> None:
        woken = self._woken[mirror.name]
        state = await self.check(mirror)
        # After a restart within a publish's schedule, it goes on where it stands.
        step = self._step_after(state, 0)
        while True:
            if step < len(self._after_publish):
                since = self.freshness.since_publish() or 0.0
                delay = max(0.0, self._after_publish[step] - since)
            else:
                delay = self.freshness.config.check_interval
            self._due[mirror.name] = self._clock() + delay
            try:
                async with asyncio.timeout(delay):
                    await woken.wait()
                woken.clear()
                step = 0
                continue  # a publish: its schedule starts now
            except TimeoutError:
                pass
            state = await self.check(mirror)
            step = self._step_after(state, step + 1)

    def _step_after(self, state: State, step: int) -> int:
        """The next step of the schedule after a publish (its length: none, back to the
        regular interval): none once fresh, and none left when its last time has passed."""
        since = self.freshness.since_publish()
        if state is State.FRESH or since is None:
            return len(self._after_publish)
        steps = range(step, len(self._after_publish))
        return next((i for i in steps if self._after_publish[i] > since), len(self._after_publish))
