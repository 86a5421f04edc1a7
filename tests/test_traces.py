"""Trace files for the mirror checkers (docs/design.md#trace-files): Debian's ftpsync trace
and Arch's lastsync, written by real syncs from a real rsync daemon."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from mirrorhook import lock, rsync, traces
from mirrorhook.addresses import upstream_host
from mirrorhook.log import TreeLog
from mirrorhook.receiver_records import SyncResult
from mirrorhook.retry import Backoff
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import COMMAND, POLL, STARTUP, Trigger, Via
from tests.helpers import RsyncDaemon, needs, publish, receiver_config

TRACE = "project/trace/mirror.example.org"
LASTSYNC = "lastsync"

# The fields of ftpsync's trace, in order: the echo lines of tracefile_content() in
# /usr/bin/ftpsync of Debian's ftpsync package, version 20180513+nmu1 (Debian 12), and of
# archvsync's git (salsa.debian.org/mirror-team/archvsync, bin/ftpsync). The first line,
# `date -u`, has no name.
FTPSYNC_FIELDS = (
    "Date",
    "Date-Started",
    "Archive serial",
    "Used ftpsync version",
    "Creator",
    "Running on host",
    "Maintainer",
    "Sponsor",
    "Country",
    "Location",
    "Throughput",
    "Trigger",
    "Architectures",
    "Architectures-Configuration",
    "Upstream-mirror",
    "Rsync-Transport",
    "Total bytes received in rsync",
    "Total time spent in stage1 rsync",
    "Total time spent in stage2 rsync",
    "Total time spent in rsync",
    "Average rate",
)
OUR_FIELDS = (
    "Date",
    "Date-Started",
    "Archive serial",
    "Creator",
    "Running on host",
    "Trigger",
    "Upstream-mirror",
    "Rsync-Transport",
    "Total bytes received in rsync",
    "Total time spent in rsync",
    "Average rate",
)


async def no_wait(_seconds: float) -> None:
    """Stand-in for asyncio.sleep between retries."""


def make_syncer(
    tmp_path: Path, upstream: str, *, clock: Callable[[], float] = time.time, **overrides: object
) -> Syncer:
    values: dict[str, object] = {"trace": TRACE, "lastsync": LASTSYNC, **overrides}
    config = receiver_config(tmp_path, upstream=upstream, **values).receiver
    assert config is not None
    return Syncer(config, backoff=Backoff(first=0.01, cap=0.01), sleep=no_wait, clock=clock)


def read_trace(path: Path) -> tuple[str, dict[str, str], list[str]]:
    """The first line, the fields by name, and the names in file order."""
    first, *rest = path.read_text().splitlines()
    names = [line.split(": ", 1)[0] for line in rest]
    return first, dict(line.split(": ", 1) for line in rest), names


def hours_later(hours: int) -> float:
    """A clock set ``hours`` ahead, for syncs that must write a later time."""
    return time.time() + hours * 3600


def host_name() -> str:
    """What ftpsync would write: ``hostname -f``."""
    if shutil.which("hostname") is None:  # pragma: no cover - net-tools/hostname is usual
        return traces.fqdn()
    return subprocess.run(
        ["hostname", "-f"], capture_output=True, text=True, check=True
    ).stdout.strip()


def is_subsequence(ours: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    remaining = iter(theirs)
    return all(name in remaining for name in ours)


# --- after a real sync ----------------------------------------------------------------------


async def test_trace_after_a_real_sync_holds_the_syncs_facts(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """Every field parses back to the sync that wrote it, in ftpsync's order."""
    syncer = make_syncer(tmp_path, daemon.url)
    before = time.time()
    report = await syncer.sync(if_changed=True, trigger=POLL)
    after = time.time()
    assert report.result is SyncResult.SYNCED
    first, fields, names = read_trace(syncer.config.target / TRACE)

    assert tuple(names) == OUR_FIELDS
    assert is_subsequence(OUR_FIELDS, FTPSYNC_FIELDS)
    written = datetime.strptime(first, "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC)
    date = parsedate_to_datetime(fields["Date"])
    started = parsedate_to_datetime(fields["Date-Started"])
    assert written == date
    # Whole seconds: the window's start is rounded down.
    assert int(before) <= started.timestamp() <= date.timestamp() <= after
    assert fields["Archive serial"] == report.marker == "1"
    assert fields["Creator"] == f"mirrorhook {importlib.metadata.version('mirrorhook')}"
    assert fields["Running on host"] == host_name()
    assert fields["Trigger"] == "poll"
    assert fields["Upstream-mirror"] == "127.0.0.1"
    assert fields["Rsync-Transport"] == "rsync"
    received = int(fields["Total bytes received in rsync"])
    assert received == report.received_bytes > 1000  # 20 files of the upstream fixture
    assert 0 <= int(fields["Total time spent in rsync"]) <= after - before
    rate = re.fullmatch(r"(\d+) B/s", fields["Average rate"])
    assert rate is not None
    assert int(rate.group(1)) == int(received / report.rsync_seconds)


async def test_lastsync_is_the_unix_time_of_the_syncs_end(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """Arch's format: whole seconds and a newline, within a second of the sync's end."""
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    ended = time.time()
    text = (syncer.config.target / LASTSYNC).read_text()
    assert re.fullmatch(r"\d+\n", text)
    assert ended - 1 <= int(text) <= ended


async def test_no_change_syncs_rewrite_both_files(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """A sync that finds the upstream marker equal to ours confirms the mirror is current
    (as ftpsync rewrites its trace on every run), in the daemon and in the cron pre-check;
    no transfer ran, so bytes and time are 0."""
    await make_syncer(tmp_path, daemon.url).sync(if_changed=True, trigger=COMMAND)
    for hours, check in ((1, "sync"), (2, "needs_sync")):
        later = make_syncer(tmp_path, daemon.url, clock=functools.partial(hours_later, hours))
        began = time.time() + hours * 3600
        if check == "sync":
            report = await later.sync(
                if_changed=True, trigger=Trigger.announcement(Via.WEBHOOK, "up", "1")
            )
            assert report.result is SyncResult.UP_TO_DATE
        else:
            assert not await later.needs_sync(trigger=COMMAND)
        ended = time.time() + hours * 3600
        _, fields, _ = read_trace(later.config.target / TRACE)
        lastsync = int((later.config.target / LASTSYNC).read_text())
        assert int(began) <= lastsync <= ended  # whole seconds: truncated, never rounded up
        assert parsedate_to_datetime(fields["Date"]).timestamp() == lastsync
        assert fields["Archive serial"] == "1"
        assert fields["Trigger"] == ("webhook" if check == "sync" else "mirrorhook sync")
        assert fields["Total bytes received in rsync"] == "0"
        assert fields["Total time spent in rsync"] == "0"
        assert fields["Average rate"] == "0 B/s"


async def test_failed_sync_leaves_both_files_alone(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """Only a sync that leaves the tree complete may claim it in a trace."""
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    files = [syncer.config.target / TRACE, syncer.config.target / LASTSYNC]
    before = [path.read_bytes() for path in files]
    (daemon.root / "CURRENT").unlink()
    later = make_syncer(tmp_path, daemon.url, clock=lambda: time.time() + 3600)
    with pytest.raises(Exception, match="no marker"):
        await later.sync(if_changed=False, trigger=COMMAND)
    assert [path.read_bytes() for path in files] == before


# --- protected from rsync -------------------------------------------------------------------


async def test_rsync_neither_deletes_nor_replaces_them(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """The next transfer's --delete (--delete-excluded too) keeps both files, and upstream
    files at the same paths are never copied over them."""
    syncer = make_syncer(tmp_path, daemon.url)
    target = syncer.config.target
    await syncer.sync(if_changed=True, trigger=COMMAND)

    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    await syncer.sync(if_changed=True, trigger=COMMAND)
    assert read_trace(target / TRACE)[1]["Archive serial"] == "2"
    assert (target / LASTSYNC).exists()

    publish(daemon.root, "3", {TRACE: "Archive serial: upstream's\n", LASTSYNC: "1\n"})
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert read_trace(target / TRACE)[1]["Archive serial"] == "3"
    assert int((target / LASTSYNC).read_text()) > 1
    # The rest of the upstream's project/ folder is mirrored as usual.
    (daemon.root / "project" / "trace" / "upstream.example.org").write_text("theirs\n")
    publish(daemon.root, "4")
    await syncer.sync(if_changed=True, trigger=COMMAND)
    assert (target / "project" / "trace" / "upstream.example.org").read_text() == "theirs\n"

    # The operator's --delete-excluded in rsync_args: the tree transfer as it would run.
    ours = [(target / name).read_bytes() for name in (TRACE, LASTSYNC)]
    for name in (TRACE, LASTSYNC):
        (daemon.root / name).unlink()
    args = rsync.tree_args(dataclasses.replace(syncer.config, rsync_args=("--delete-excluded",)))
    await rsync.run(args, timeout=60)
    assert [(target / name).read_bytes() for name in (TRACE, LASTSYNC)] == ours


# --- a failure to write is not a failed sync ------------------------------------------------


@pytest.mark.parametrize("upstream_project", ["a file", "a symbolic link"])
async def test_a_trace_that_cannot_be_written_is_logged_and_the_sync_stands(
    tmp_path: Path, daemon: RsyncDaemon, caplog: pytest.LogCaptureFixture, upstream_project: str
) -> None:
    """An upstream `project` that is a file, or a symlink (never followed: it could lead
    anywhere in the tree), leaves no room for the trace: one error line, and the sync is
    still `synced` with its marker and lastsync in place."""
    project = daemon.root / "project"
    if upstream_project == "a file":
        project.write_text("not a folder\n")
    else:
        project.symlink_to("dir0")
    syncer = make_syncer(tmp_path, daemon.url)
    caplog.set_level(logging.INFO)
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert syncer.local_marker() == "1"
    assert (syncer.config.target / LASTSYNC).exists()
    assert not (daemon.root / "dir0" / "trace").exists()
    assert not (syncer.config.target / "dir0" / "trace").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"cannot write the trace file {syncer.config.target / TRACE}: ")
    assert errors[0].endswith("; the sync itself succeeded")
    assert "\n" not in errors[0]


def written_outside_and_temporaries(tmp_path: Path, outside: Path) -> tuple[list[Path], list[Path]]:
    """What is in the folder outside the tree, and the temporary files left anywhere."""
    return sorted(outside.rglob("*")), sorted(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("link", ["project", "project/trace", None])
async def test_a_link_on_the_way_is_refused_and_nothing_is_written_outside_the_tree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, link: str | None
) -> None:
    """A local user who can write the tree made a folder of the trace's path a symbolic
    link to a folder outside it (or, with no link, put a folder where the file goes): one
    error line, nothing written outside, no temporary file anywhere; lastsync is written
    as usual."""
    syncer = make_syncer(tmp_path, "rsync://127.0.0.1:9/up/")
    target = syncer.config.target
    outside = tmp_path / "outside"
    outside.mkdir()
    if link is None:
        (target / TRACE).mkdir(parents=True)
    else:
        (target / link).parent.mkdir(parents=True)
        (target / link).symlink_to(outside)
    sync = traces.Sync(serial="1", trigger=POLL, started=time.time(), finished=time.time())
    caplog.set_level(logging.INFO)
    await traces.write(syncer.config, sync, TreeLog(logging.getLogger("test"), None))
    assert written_outside_and_temporaries(tmp_path, outside) == ([], [])
    assert (target / LASTSYNC).read_text() == f"{int(sync.finished)}\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"cannot write the trace file {target / TRACE}: ")
    if link is not None:
        assert f"a folder on the way is a symbolic link ({target / link})" in errors[0]


async def test_a_folder_swapped_for_a_link_during_the_write_is_refused_and_the_sync_stands(
    tmp_path: Path,
    daemon: RsyncDaemon,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local user swaps the trace's folder for a link to a folder outside the tree just
    after mirrorhook created it and before it writes the file there: the race, without its
    timing, by an os.mkdir that replaces the `trace` folder it has just made with the link
    (a check of that path made before would have passed). Nothing is written outside and no
    temporary file is left; one error line; the sync is `synced` with its marker and
    lastsync."""
    outside = tmp_path / "outside"
    outside.mkdir()
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: str | Path, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if Path(path).name == "trace":
            os.rmdir(path, dir_fd=dir_fd)
            os.symlink(outside, path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    syncer = make_syncer(tmp_path, daemon.url)
    caplog.set_level(logging.INFO)
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert (syncer.config.target / "project" / "trace").is_symlink(), "the swap happened"
    assert report.result is SyncResult.SYNCED
    assert syncer.local_marker() == "1"
    assert (syncer.config.target / LASTSYNC).exists()
    assert written_outside_and_temporaries(tmp_path, outside) == ([], [])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"cannot write the trace file {syncer.config.target / TRACE}: ")
    assert "a folder on the way is a symbolic link" in errors[0]


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", [0, 1_795_633_375, 1_796_068_800.9])
def test_dates_are_written_as_posix_date_writes_them(moment: float) -> None:
    """The first line as `date -u`, Date and Date-Started as `date -u -R` (the calls in
    ftpsync's tracefile_content), in the POSIX locale; compared with GNU date itself."""
    if shutil.which("date") is None:  # pragma: no cover - coreutils is everywhere we run
        pytest.skip("no date(1)")
    env = {**os.environ, "LC_ALL": "POSIX", "LANG": "POSIX"}

    def date(*args: str) -> str:
        return subprocess.run(
            ["date", "-u", f"--date=@{int(moment)}", *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.strip()

    assert traces.date_u(moment) == date()
    assert traces.rfc2822(moment) == date("-R")


@needs("ftpsync", package="ftpsync")
def test_ftpsync_reference_fields_match_the_installed_ftpsync() -> None:
    """FTPSYNC_FIELDS is what the installed ftpsync writes."""
    script = Path(str(shutil.which("ftpsync")))
    body = script.read_text().split("function tracefile_content()", 1)[1].split("\n}\n", 1)[0]
    echoed = re.findall(r'echo "([A-Z][A-Za-z0-9 -]*): ', body)
    # Architectures-Configuration is echoed in three branches of an if.
    assert tuple(dict.fromkeys(echoed)) == FTPSYNC_FIELDS


@pytest.mark.parametrize(
    ("trigger", "word"),
    [
        (Trigger.announcement(Via.WEBHOOK, "upstream.example.org", "20261125"), "webhook"),
        (Trigger.announcement(Via.EVENTS, "10.0.0.1", "x\nArchive serial: forged"), "events"),
        (Trigger.announcement(Via.MQTT, "broker", "x\nArchive serial: forged"), "mqtt"),
        (POLL, "poll"),
        (STARTUP, "startup check"),
        (COMMAND, "mirrorhook sync"),
    ],
)
def test_trigger_is_a_fixed_word_per_kind(trigger: Trigger, word: str) -> None:
    """Never an announcement's own text: it holds fields of the request."""
    sync = traces.Sync(serial="1", trigger=trigger, started=0.0, finished=1.0)
    text = traces.trace_text(sync, upstream="rsync://up/m/", host="mirror", version="1")
    assert f"\nTrigger: {word}\n" in text
    assert "forged" not in text


@pytest.mark.parametrize(
    ("upstream", "host", "transport"),
    [
        ("rsync://mirror.example.org/ius/", "mirror.example.org", "rsync"),
        ("rsync://user@mirror.example.org:8730/ius/", "mirror.example.org", "rsync"),
        ("rsync://[2001:db8::1]/ius/", "2001:db8::1", "rsync"),
        ("user@mirror.example.org::ius/", "mirror.example.org", "rsync"),
        ("mirror.example.org::ius/", "mirror.example.org", "rsync"),
        ("mirror@mirror.example.org:/srv/ius/", "mirror.example.org", "ssh"),
        ("mirror.example.org:ius/", "mirror.example.org", "ssh"),
        ("/srv/upstream/ius/", None, "local"),
    ],
)
def test_upstream_host_and_transport(upstream: str, host: str | None, transport: str) -> None:
    """Upstream-mirror is the host alone (no login, no port); Rsync-Transport the kind."""
    assert upstream_host(upstream) == host
    assert traces.transport(upstream) == transport


async def test_the_cron_pre_check_leaves_the_files_alone_while_a_sync_holds_the_lock(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """The pre-check of `sync --if-changed --randomize` holds no lock: while another sync
    holds it (and may be transferring), the files are not rewritten — that sync will."""
    await make_syncer(tmp_path, daemon.url).sync(if_changed=True, trigger=COMMAND)
    later = make_syncer(tmp_path, daemon.url, clock=functools.partial(hours_later, 1))
    written = (later.config.target / LASTSYNC).read_text()
    with lock.hold(later.config):
        assert not await later.needs_sync(trigger=COMMAND)
    assert (later.config.target / LASTSYNC).read_text() == written
    assert not await later.needs_sync(trigger=COMMAND)  # free again: rewritten
    assert int((later.config.target / LASTSYNC).read_text()) > int(written) + 3000
