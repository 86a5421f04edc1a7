"""Watching the marker file: watchdog events, collapsed into one reading per change.

The observer watches the tree root (not recursively) and reacts to the marker being
created, modified, closed after writing, or renamed into place; and the root's parent, for
the root itself replaced (a snapshot's symlink switched, docs/design.md#snapshots): then
it watches the new root and reads its marker at once. Its thread only hands a
note to the event loop (``call_soon_threadsafe``); the loop reads the marker once for a
burst of events. A ``rescan`` timer re-reads the marker and re-establishes the watch when
the root folder was replaced (its device and inode changed), because inotify loses events
when its queue overflows and goes deaf when the watched folder is swapped.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from mirrorhook import marker
from mirrorhook.errors import MarkerError

logger = logging.getLogger(__name__)

SETTLE = 0.05
"""Seconds without further writes before an in-place write is read (it may be half done)."""
POLL_OBSERVER_INTERVAL = 1.0
"""How often watch = "poll" lists the folder."""

_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
]


def _open_for_writing(path: Path) -> bool:
    """Return whether some process has ``path`` open for writing (Linux read-lease probe).

    A read lease is refused with EAGAIN while the file is open for writing. Taking one
    needs the file's owner or CAP_LEASE; when we cannot tell, assume nobody writes.
    """
    try:
        # Not through a symlink (the marker is refused then anyway), never waiting on a FIFO.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


class _Handler(FileSystemEventHandler):
    """Runs in the observer's thread: filters for the marker, then hops to the loop."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        note: Callable[[bool], None],
        *,
        has_close_events: bool,
    ):
        self._path = os.fsencode(path)
        self._loop = loop
        self._note = note
        self._has_close_events = has_close_events

    def on_any_event(self, event: FileSystemEvent) -> None:
        touched = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        if os.fsencode(touched) != self._path:
            return
        if isinstance(event, FileModifiedEvent) and self._has_close_events:
            return  # inotify reports the close after the last write: read the file then
        # A closed-after-writing or renamed-into-place marker is complete; a created one
        # (or a modified one, when polling) may still be being written.
        complete = isinstance(event, FileClosedEvent | FileMovedEvent)
        self._loop.call_soon_threadsafe(self._note, complete)


_ROOT_EVENTS: list[type[FileSystemEvent]] = [
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileMovedEvent,
]


class _RootHandler(FileSystemEventHandler):
    """Runs in the observer's thread: the root itself replaced in its parent folder (a
    snapshot's symlink switched, a folder renamed into place), then hops to the loop."""

    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop, swapped: Callable[[], None]):
        self._root = os.fsencode(root)
        self._loop = loop
        self._swapped = swapped

    def on_any_event(self, event: FileSystemEvent) -> None:
        touched = (
            event.dest_path if isinstance(event, FileMovedEvent | DirMovedEvent) else event.src_path
        )
        if os.fsencode(touched) == self._root:
            self._loop.call_soon_threadsafe(self._swapped)


class MarkerWatcher:
    """Calls ``on_value(value)`` with the marker's value whenever the file may have changed.

    The same value may be reported more than once (after a rescan, say); the receiver of
    the calls ignores values it has already seen.
    """

    def __init__(
        self,
        root: Path,
        marker_name: str,
        on_value: Callable[[str], object],
        *,
        polling: bool = False,
        rescan: float = 60.0,
        settle: float = SETTLE,
    ) -> None:
        self.root = root
        self.path = root / marker_name
        self._on_value = on_value
        self._polling = polling
        self._rescan = rescan
        self._settle = settle
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._last_read = float("-inf")
        self._refused: str | None = None
        self.reads = 0
        """How many times the marker was read (to check that bursts collapse)."""

    async def run(self) -> None:
        """Watch until cancelled; the marker is read once at the start."""
        loop = asyncio.get_running_loop()
        try:
            self._watch(loop)
            self.read()
            while True:
                await asyncio.sleep(self._rescan)
                self._check_identity(loop)
                self.read()
        finally:
            self._cancel_pending()
            self._stop_observer()

    def read(self) -> None:
        """Read the marker now and report its value (an empty, missing or refused marker is
        not: a refused one is logged, see ``marker.load``).

        A marker that some process still has open for writing is read later instead: a
        publisher that writes in place, slowly, must not have half a value announced.
        """
        self._cancel_pending()
        loop = asyncio.get_running_loop()
        if _open_for_writing(self.path):
            self._pending = loop.call_later(self._settle, self.read)
            return
        self._last_read = loop.time()
        self.reads += 1
        try:
            value = marker.read(self.path)
        except MarkerError as err:
            # Said once per refusal, not at every rescan; nothing is announced meanwhile.
            if str(err) != self._refused:
                logger.warning("%s; announcing nothing until it is a valid marker", err)
                self._refused = str(err)
            return
        self._refused = None
        if value:
            self._on_value(value)

    def _note(self, complete: bool) -> None:
        """An event touched the marker: schedule one reading for the whole burst.

        A complete marker is read at once, or at the end of the ``settle`` window that
        follows the previous reading, so a burst of events costs a reading or two. A
        marker that may still be written is read once the events stop for ``settle``.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if complete:
            when = max(now, self._last_read + self._settle)
            if self._pending is not None and self._pending.when() <= when:
                return
        else:
            # Created (inotify: by an open, or a rename from another folder) or modified
            # (polling): possibly still being written. A close event, if one comes, reads
            # it sooner; ``read`` itself waits while a writer holds the file open.
            when = now + self._settle
        self._cancel_pending()
        self._pending = loop.call_at(when, self.read)

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop_observer()
        try:
            observer = self._observed(loop, parent=True)
        except OSError as err:
            # The root may be missing for a moment (a swap in progress): the rescan retries.
            logger.warning("cannot watch %s: %s; retrying at the next rescan", self.root, err)
            self._identity = None
            return
        self._observer = observer
        self._identity = self._current_identity()
        logger.info(
            "watching %s (%s)", self.path, "polling" if self._polling else type(observer).__name__
        )

    def _observed(self, loop: asyncio.AbstractEventLoop, *, parent: bool) -> BaseObserver:
        """A started observer of the root and, with ``parent``, of its parent folder (a
        switch of the root is then seen at once); a parent that cannot be watched (not
        readable, say) leaves the root watched alone, its switches seen at the rescan."""
        observer: BaseObserver = (
            PollingObserver(timeout=POLL_OBSERVER_INTERVAL) if self._polling else Observer()
        )
        observer.schedule(
            _Handler(self.path, loop, self._note, has_close_events=not self._polling),
            str(self.root),
            recursive=False,
            event_filter=_EVENTS,
        )
        if parent and self.root.parent != self.root:
            observer.schedule(
                _RootHandler(self.root, loop, functools.partial(self._swapped, loop)),
                str(self.root.parent),
                recursive=False,
                event_filter=_ROOT_EVENTS,
            )
        try:
            observer.start()
        except OSError as err:
            observer.stop()  # an emitter that did start
            if not parent:
                raise
            logger.info("cannot watch %s (%s): watching %s alone", self.root.parent, err, self.root)
            return self._observed(loop, parent=False)
        return observer

    def _swapped(self, loop: asyncio.AbstractEventLoop) -> None:
        """The root was replaced (a snapshot switched): watch the new one, read its marker."""
        self._check_identity(loop)
        self.read()

    def _check_identity(self, loop: asyncio.AbstractEventLoop) -> None:
        identity = self._current_identity()
        if identity is not None and identity != self._identity:
            logger.warning("%s was replaced by another folder: watching the new one", self.root)
            self._watch(loop)

    def _current_identity(self) -> tuple[int, int] | None:
        try:
            stat = self.root.stat()
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
