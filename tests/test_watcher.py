"""MarkerWatcher with real watchdog observers on real files (issue 3, "Watcher").

Every test runs ``MarkerWatcher.run()`` as a task over a folder in ``tmp_path``, with the
native inotify observer and, where the behaviour is the same, with ``polling=True``. The
values handed to ``on_value`` are recorded twice: raw, and deduplicated the way
``Publisher.publish`` does it (a value counts only when it differs from the last one), which
is what a mirror ends up receiving.

Negative claims ("this triggers nothing") are checked with a sentinel instead of a fixed
sleep: watchdog hands events to the loop in order, so once a later publish has been
reported, every earlier event has been handled too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from mirrorhook.watcher import SETTLE, MarkerWatcher
from tests.helpers import fifo_released_after, write_secret

MARKER = "CURRENT"
WAIT = 10.0
"""Upper bound for any wait; the polling observer needs about a second per change."""
STEP = 0.005
"""How often a wait checks its condition."""
NEVER = 3600.0
"""A rescan period no test lives to see: changes are then found by watchdog events only."""
RESCAN = 0.2
"""The short rescan period of the safety-net tests."""
BURST = 50

BOTH_OBSERVERS = pytest.mark.parametrize(
    "polling", [pytest.param(False, id="inotify"), pytest.param(True, id="poll")]
)


class Recorder:
    """The ``on_value`` callback: keeps every call, and the values a publisher would announce."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        """Every value passed to ``on_value``, repeats included."""
        self.values: list[str] = []
        """The values that differ from the one before (``Publisher.publish``'s dedupe)."""

    def __call__(self, value: str) -> None:
        self.calls.append(value)
        if not self.values or self.values[-1] != value:
            self.values.append(value)


class Watching:
    """Runs a MarkerWatcher as an asyncio task for the duration of an ``async with``."""

    def __init__(self, root: Path, *, polling: bool, rescan: float = NEVER) -> None:
        self.recorder = Recorder()
        self.watcher = MarkerWatcher(root, MARKER, self.recorder, polling=polling, rescan=rescan)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.watcher.run(), name="watcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task = self._running()
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError("the watcher's task failed") from task.exception()

    def _running(self) -> asyncio.Task[None]:
        assert self._task is not None, "use Watching in an async with block"
        return self._task

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Wait (at most ``timeout`` seconds) until ``condition()`` holds; fail if the watcher
        dies meanwhile."""
        task = self._running()
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    assert not task.done(), f"the watcher stopped while waiting for {what}"
                    await asyncio.sleep(STEP)
        except TimeoutError:
            pytest.fail(f"no {what} within {timeout} s; on_value calls: {self.recorder.calls}")

    async def until_value(self, value: str, timeout: float = WAIT) -> None:
        """Wait until ``value`` is the newest value reported."""
        await self.until(
            lambda: self.recorder.calls[-1:] == [value],
            f"report of marker value {value!r}",
            timeout,
        )

    async def until_read(self, reads: int) -> None:
        """Wait until the watcher has read the marker more than ``reads`` times."""
        await self.until(lambda: self.watcher.reads > reads, "read of the marker")

    async def rescan_never_again(self) -> None:
        """Stretch the rescan period to NEVER and wait out the rescan already scheduled.

        From then on only a working watchdog watch can report a change. This sets a private
        attribute that ``run()`` reads before each rescan sleep: the public API offers no
        other way to make a watcher that has just rescanned stop rescanning.
        """
        loop = asyncio.get_running_loop()
        stretched = loop.time()
        self.watcher._rescan = NEVER  # private, see the docstring
        # The rescan already sleeping ends within RESCAN seconds with a read; a second one
        # within 2 * RESCAN would mean that the stretch did not take (nothing else reads).
        reads = self.watcher.reads
        await self.until(
            lambda: self.watcher.reads > reads and loop.time() > stretched + 2 * RESCAN,
            "the last short rescan",
        )
        assert self.watcher.reads == reads + 1, "the rescan period was not stretched"


def publish_by_rename(root: Path, value: str, *, staging: Path | None = None) -> None:
    """Publish like contrib's hook does: write a temporary file, rename it onto the marker."""
    temporary = (staging or root) / f"{MARKER}.tmp"
    temporary.write_text(f"{value}\n")
    temporary.replace(root / MARKER)


def write_in_place(path: Path, value: str) -> None:
    """Rewrite ``path`` in place: open with truncation, write, close."""
    with path.open("w") as file:
        file.write(f"{value}\n")


def make_root(tmp_path: Path, value: str) -> Path:
    """A tree root whose marker holds ``value``."""
    root = tmp_path / "root"
    root.mkdir()
    (root / MARKER).write_text(f"{value}\n")
    return root


@BOTH_OBSERVERS
async def test_initial_value_is_read_at_start(tmp_path: Path, polling: bool) -> None:
    """The marker is read once at start, before anything touches it."""
    root = make_root(tmp_path, "20261124T0600")
    async with Watching(root, polling=polling) as watching:
        await watching.until_value("20261124T0600")
        assert watching.watcher.reads == 1
    assert watching.recorder.calls == ["20261124T0600"]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_rename_into_place_reports_each_publish_once(tmp_path: Path, polling: bool) -> None:
    """Writing CURRENT.tmp and renaming it onto CURRENT reports each new value, in order."""
    root = make_root(tmp_path, "0")
    published = ["1", "2", "3", "4"]
    async with Watching(root, polling=polling) as watching:
        await watching.until_value("0")
        for value in published:
            publish_by_rename(root, value)
            await watching.until_value(value)
    assert watching.recorder.values == ["0", *published]
    assert set(watching.recorder.calls) == {"0", *published}


@pytest.mark.parametrize(
    ("polling", "pause"),
    [
        # A writer that pauses for less than SETTLE: the watcher must wait for the rest.
        pytest.param(False, SETTLE / 5, id="inotify-short-pause"),
        pytest.param(True, SETTLE / 5, id="poll-short-pause"),
        # A writer that pauses longer (a loaded host, a shell writing with two commands):
        # inotify still says when the writer closes the file, so nothing half-written need
        # ever be read. (The polling observer has no such signal; it is not held to this.)
        pytest.param(
            False,
            10 * SETTLE,
            id="inotify-long-pause",
        ),
    ],
)
@pytest.mark.slow
async def test_in_place_write_reports_final_value_never_a_partial_one(
    tmp_path: Path, polling: bool, pause: float
) -> None:
    """A marker rewritten in place in two chunks is reported whole; the first chunk never is."""
    root = make_root(tmp_path, "1")
    async with Watching(root, polling=polling) as watching:
        await watching.until_value("1")
        for rest in ["1125", "1126"]:
            with (root / MARKER).open("w") as file:
                file.write("2026")
                file.flush()
                # Hold the write open for `pause` seconds, or until the watcher has looked.
                reads = watching.watcher.reads
                try:
                    async with asyncio.timeout(pause):
                        while watching.watcher.reads == reads:
                            await asyncio.sleep(STEP)
                except TimeoutError:
                    pass
                file.write(f"{rest}\n")
            await watching.until_value(f"2026{rest}")
    assert "2026" not in watching.recorder.calls
    assert watching.recorder.values == ["1", "20261125", "20261126"]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_rename_from_another_folder_is_reported(tmp_path: Path, polling: bool) -> None:
    """A marker written in a sibling folder and renamed onto root/CURRENT is reported."""
    root = make_root(tmp_path, "0")
    staging = tmp_path / "staging"
    staging.mkdir()
    async with Watching(root, polling=polling) as watching:
        await watching.until_value("0")
        for value in ["1", "2", "3"]:
            publish_by_rename(root, value, staging=staging)
            await watching.until_value(value)
    assert watching.recorder.values == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "polling",
    [
        pytest.param(
            False,
            id="inotify",
        ),
        pytest.param(True, id="poll"),
    ],
)
@pytest.mark.slow
async def test_burst_of_rewrites_is_reported_once_and_read_far_fewer_times(
    tmp_path: Path, polling: bool
) -> None:
    """50 in-place rewrites of one value in a tight loop: reported once, read at most 5 times.

    With inotify each rewrite is at least one closed-after-writing event for the marker, so
    the burst is 50 events or more.
    """
    root = make_root(tmp_path, "1")
    async with Watching(root, polling=polling) as watching:
        await watching.until_value("1")
        reads = watching.watcher.reads
        for _ in range(BURST):
            write_in_place(root / MARKER, "2")
        await watching.until_value("2")
        # The sentinel's events queue up behind the burst's: once "3" is reported, every
        # event of the burst has been handled.
        publish_by_rename(root, "3")
        await watching.until_value("3")
        reads = watching.watcher.reads - reads
    assert watching.recorder.values == ["1", "2", "3"]
    assert reads <= BURST // 10, f"{reads} reads for a burst of {BURST} rewrites"
    assert watching.recorder.calls.count("2") <= BURST // 10


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_empty_marker_is_never_reported(tmp_path: Path, polling: bool) -> None:
    """An empty or blank marker, at start or published later, is read but never reported."""
    root = make_root(tmp_path, "")
    async with Watching(root, polling=polling) as watching:
        await watching.until_read(0)
        for blank in ["   ", ""]:
            reads = watching.watcher.reads
            publish_by_rename(root, blank)
            await watching.until_read(reads)
        assert watching.recorder.calls == []
        publish_by_rename(root, "1")
        await watching.until_value("1")
    assert watching.recorder.calls == ["1"]


async def test_other_files_in_the_root_trigger_nothing(tmp_path: Path) -> None:
    """Writing, renaming and deleting files not named CURRENT causes no read of the marker.

    inotify only: it reports every event as it happens, so the sentinel publish below comes
    after them. The polling observer may fold them into the sentinel's poll, where a
    mistaken read would hide inside the sentinel's own; both observers share the filter.
    """
    root = make_root(tmp_path, "1")
    async with Watching(root, polling=False) as watching:
        await watching.until_value("1")
        reads = watching.watcher.reads
        (root / "OTHER").write_text("2\n")
        write_in_place(root / "OTHER", "3")
        (root / f"{MARKER}.tmp").write_text("4\n")
        (root / f"{MARKER}.tmp").replace(root / "OTHER")
        (root / "OTHER").unlink()
        (root / f"{MARKER}.old").write_text("5\n")
        (root / "sub").mkdir()
        (root / "sub" / MARKER).write_text("6\n")
        # The sentinel: one rename onto the marker, so exactly one read.
        publish_by_rename(root, "7")
        await watching.until_value("7")
        assert watching.watcher.reads == reads + 1
    assert watching.recorder.calls == ["1", "7"]


async def test_rescan_finds_a_change_the_observer_cannot_see(tmp_path: Path) -> None:
    """A write through a hard link in another folder raises no inotify event in the root;
    the periodic rescan still reports the new value within a couple of periods."""
    root = make_root(tmp_path, "1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "link"
    link.hardlink_to(root / MARKER)
    async with Watching(root, polling=False, rescan=RESCAN) as watching:
        await watching.until_value("1")
        write_in_place(link, "2")
        await watching.until_value("2", timeout=5 * RESCAN)
    assert watching.recorder.values == ["1", "2"]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_swapped_root_folder_is_rewatched_and_next_publish_reported(
    tmp_path: Path, polling: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The root folder replaced by another one: the rescan reports the new folder's marker
    and re-establishes the watch, so a later publish in the new folder is reported by an
    event (the rescan is stretched to an hour first, so it cannot be the rescan)."""
    caplog.set_level(logging.WARNING, logger="mirrorhook.watcher")
    root = make_root(tmp_path, "1")
    async with Watching(root, polling=polling, rescan=RESCAN) as watching:
        await watching.until_value("1")
        replacement = tmp_path / "replacement"
        replacement.mkdir()
        publish_by_rename(replacement, "2")
        root.rename(tmp_path / "old")
        replacement.rename(root)
        await watching.until_value("2", timeout=5 * RESCAN)
        await watching.until(
            lambda: any("was replaced by another folder" in r.getMessage() for r in caplog.records),
            "warning that the root was replaced",
            timeout=5 * RESCAN,
        )
        await watching.rescan_never_again()
        publish_by_rename(root, "3")
        await watching.until_value("3")
    assert watching.recorder.values == ["1", "2", "3"]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_root_missing_at_start_is_watched_once_it_exists(
    tmp_path: Path, polling: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Watching a root that does not exist yet does not crash; once the folder appears the
    rescan reports its marker and starts watching it (a later publish is reported by an
    event, with the rescan stretched to an hour)."""
    caplog.set_level(logging.WARNING, logger="mirrorhook.watcher")
    root = tmp_path / "root"
    async with Watching(root, polling=polling, rescan=RESCAN) as watching:
        await watching.until_read(0)
        assert any("cannot watch" in record.getMessage() for record in caplog.records)
        await watching.until_read(watching.watcher.reads)  # a rescan without the folder
        assert watching.recorder.calls == []
        make_root(tmp_path, "1")
        await watching.until_value("1", timeout=5 * RESCAN)
        await watching.rescan_never_again()
        publish_by_rename(root, "2")
        await watching.until_value("2")
    assert watching.recorder.values == ["1", "2"]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_marker_created_then_written_slowly_is_never_read_half_written(
    tmp_path: Path, polling: bool
) -> None:
    """A new marker file created by open() and written with a pause longer than the settle
    time (and a rescan meanwhile) is reported whole: a file open for writing is not read."""
    root = tmp_path / "root"
    root.mkdir()
    async with Watching(root, polling=polling, rescan=0.1) as watching:
        with (root / MARKER).open("w") as file:
            file.write("2026")
            file.flush()
            await asyncio.sleep(max(10 * SETTLE, 1.5 if polling else 0))
            file.write("1125\n")
        await watching.until_value("20261125")
    assert watching.recorder.calls[0] == "20261125"
    assert "2026" not in watching.recorder.calls


def plant(root: Path, make: Callable[[Path], None]) -> None:
    """Replace the marker by what ``make`` creates, renamed into place in one step."""
    staged = root / f".{MARKER}.planted"
    make(staged)
    staged.replace(root / MARKER)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("refusing marker")
    ]


@BOTH_OBSERVERS
@pytest.mark.slow
async def test_symlinked_marker_is_refused_once_in_the_log_and_never_reported(
    tmp_path: Path, polling: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """CURRENT replaced by a symlink to a mirror's secret file: nothing is reported, one
    warning says why (not repeated by the rescans), and the secret is in no log record.
    A valid marker published afterwards is reported again."""
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "mirror-a.secret"
    secret = write_secret(secret_file)
    root = make_root(tmp_path, "1")
    async with Watching(root, polling=polling, rescan=RESCAN) as watching:
        await watching.until_value("1")
        plant(root, lambda path: path.symlink_to(secret_file))
        await watching.until(lambda: bool(refusals(caplog)), "the refusal in the log")
        reads = watching.watcher.reads
        await watching.until_read(reads + 2)  # two rescans later, still one warning
        assert refusals(caplog) == [
            f"refusing marker {root / MARKER}: it is a symbolic link (not followed); "
            "announcing nothing until it is a valid marker"
        ]
        publish_by_rename(root, "2")
        await watching.until_value("2")
    assert watching.recorder.calls.count("1") >= 1
    assert set(watching.recorder.calls) == {"1", "2"}
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret.removeprefix("whsec_") not in record.getMessage()


@pytest.mark.parametrize("when", ["at-start", "published"])
async def test_fifo_as_marker_is_refused_without_blocking_the_loop(
    tmp_path: Path, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO as CURRENT (there at start, or renamed into place) is refused at once: a
    ticking coroutine never stalls. (A read that blocked the loop would be let go after
    5 s by a writer, and the test fail on the stall and on the value it reported.)"""
    caplog.set_level(logging.WARNING, logger="mirrorhook.watcher")
    root = make_root(tmp_path, "1")
    if when == "at-start":
        (root / MARKER).unlink()
        os.mkfifo(root / MARKER)
    ticks: list[float] = []

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(tick())
        await asyncio.sleep(0.05)  # the ticker is ticking before the watcher starts
        with fifo_released_after(root / MARKER, 5):
            async with Watching(root, polling=False) as watching:
                if when == "published":
                    await watching.until_value("1")
                    plant(root, os.mkfifo)
                await watching.until(lambda: bool(refusals(caplog)), "the refusal in the log")
        await asyncio.sleep(0.05)  # ... and after it read the FIFO
        ticker.cancel()
    assert refusals(caplog) == [
        f"refusing marker {root / MARKER}: it is not a regular file but a FIFO; "
        "announcing nothing until it is a valid marker"
    ]
    assert "released" not in watching.recorder.calls
    stall = max(later - earlier for earlier, later in itertools.pairwise(ticks))
    assert stall < 1, f"the event loop stalled for {stall:.1f} s"
