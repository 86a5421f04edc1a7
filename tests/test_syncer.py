"""The sync engine against a real rsync daemon: docs/design.md#the-two-stage-sync and what
follows it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mirrorhook.errors import NoMarkerError, RsyncError, UpstreamMarkerError
from mirrorhook.leftovers import RSYNC_TMP_DIR
from mirrorhook.receiver_records import SyncResult
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.retry import Backoff
from mirrorhook.status import receiver_status
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import COMMAND
from tests.helpers import (
    RsyncDaemon,
    counting_rsync,
    failing_once_rsync,
    publish,
    receiver_config,
    stub_rsync,
    tree_invocations,
    trees_equal,
    until,
    write_secret,
)


async def no_wait(_seconds: float) -> None:
    """Stand-in for asyncio.sleep between retries, so retry tests do not wait."""


def make_syncer(tmp_path: Path, upstream: str, **overrides: object) -> Syncer:
    config = receiver_config(tmp_path, upstream=upstream, **overrides).receiver
    assert config is not None
    return Syncer(config, backoff=Backoff(first=0.01, cap=0.01), sleep=no_wait)


async def test_sync_copies_the_tree_and_installs_the_marker_last(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """A sync from a real daemon leaves a tree equal to the upstream, marker included."""
    syncer = make_syncer(tmp_path, daemon.url)
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert report.marker == "1"
    assert trees_equal(daemon.root, syncer.config.target)
    assert syncer.local_marker() == "1"
    recorded = json.loads(receiver_state_path(syncer.config).read_text())
    assert recorded["last_sync"]["result"] == "synced"
    assert recorded["in_progress"] is None


async def test_if_changed_transfers_nothing_when_markers_match(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """With equal markers, only the marker is read: no tree transfer runs."""
    log = tmp_path / "rsync.log"
    syncer = make_syncer(tmp_path, daemon.url, rsync=str(counting_rsync(tmp_path, log)))
    await syncer.sync(if_changed=True, trigger=COMMAND)
    assert len(tree_invocations(log)) == 1
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.UP_TO_DATE
    assert len(tree_invocations(log)) == 1
    forced = await syncer.sync(if_changed=False, trigger=COMMAND)
    assert forced.result is SyncResult.SYNCED
    assert len(tree_invocations(log)) == 2


async def test_deletions_and_changes_reach_the_mirror(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """A publish that changes, adds and deletes files is mirrored exactly."""
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    (daemon.root / "dir0" / "file0.rpm").unlink()
    publish(daemon.root, "2", {"dir1/file1.rpm": "changed\n", "new/dir/pkg.rpm": "new\n"})
    await syncer.sync(if_changed=True, trigger=COMMAND)
    assert trees_equal(daemon.root, syncer.config.target)
    assert syncer.local_marker() == "2"


async def test_upstream_without_marker_is_refused_and_the_mirror_kept(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """docs/design.md#the-no-marker-guard: an emptied upstream must not make --delete wipe the
    mirror."""
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    before = sorted(p.relative_to(syncer.config.target) for p in syncer.config.target.rglob("*"))
    for child in daemon.root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    with pytest.raises(NoMarkerError, match="refusing to sync"):
        await syncer.sync(if_changed=False, trigger=COMMAND)
    after = sorted(p.relative_to(syncer.config.target) for p in syncer.config.target.rglob("*"))
    assert after == before
    assert syncer.local_marker() == "1"
    recorded = json.loads(receiver_state_path(syncer.config).read_text())
    assert recorded["last_sync"]["result"] == "failed"
    assert "no marker" in recorded["last_sync"]["error"]


async def test_missing_local_upstream_folder_is_refused(tmp_path: Path) -> None:
    """An unmounted local upstream (the folder is gone) counts as 'no marker'."""
    syncer = make_syncer(tmp_path, str(tmp_path / "not-mounted"))
    with pytest.raises(NoMarkerError):
        await syncer.sync(if_changed=False, trigger=COMMAND)
    assert not syncer.config.target.exists()


@pytest.mark.slow
async def test_marker_moving_during_stage_one_repeats_it(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """docs/design.md#the-two-stage-sync: a publish during the transfer makes stage 1 run
    again; the result is V2."""
    log = tmp_path / "rsync.log"
    slow = counting_rsync(tmp_path, log, delay=0.5)
    syncer = make_syncer(tmp_path, daemon.url, rsync=str(slow))
    task = asyncio.create_task(syncer.sync(if_changed=True, trigger=COMMAND))
    await until(lambda: tree_invocations(log), 10)
    publish(daemon.root, "2", {"dir2/late.rpm": "published during stage 1\n"})
    report = await task
    assert report.rounds == 2
    assert report.marker == "2"
    assert len(tree_invocations(log)) == 2
    assert trees_equal(daemon.root, syncer.config.target)


@pytest.mark.slow
async def test_killed_transfer_keeps_the_old_marker_and_the_next_leaves_no_tmp(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """docs/design.md#the-two-stage-sync and docs/design.md#leftovers-of-an-interrupted-sync:
    cancel mid-transfer, the old marker stays; then a completed sync
    leaves no .~tmp~ even where rsync itself has nothing more to do (the next publish drops
    the half-copied files but keeps their folder, so rsync never revisits the leftover)."""
    first = make_syncer(tmp_path, daemon.url)
    await first.sync(if_changed=True, trigger=COMMAND)
    publish(daemon.root, "2", {f"big/part{i}.bin": "x" * 400_000 for i in range(6)})
    slow = Syncer(dataclasses.replace(first.config, rsync_args=("--bwlimit=500",)))
    task = asyncio.create_task(slow.sync(if_changed=True, trigger=COMMAND))
    target = first.config.target
    await until(lambda: any(target.rglob(RSYNC_TMP_DIR)), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert any(target.rglob(RSYNC_TMP_DIR)), "the kill should have left rsync's staging folder"
    assert first.local_marker() == "1"
    for part in (daemon.root / "big").iterdir():
        part.unlink()
    publish(daemon.root, "3")
    report = await first.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert not any(target.rglob(RSYNC_TMP_DIR))
    assert trees_equal(daemon.root, target)


async def test_transient_failure_of_the_tree_transfer_is_retried(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """The tree transfer itself (not only the marker read) is retried on a transient code:
    a stub that fails the first tree transfer with 30, then runs the real rsync."""
    calls = tmp_path / "tree-calls"
    stub = failing_once_rsync(
        tmp_path,
        calls,
        code=30,
        message="rsync error: timeout in data send/receive (code 30)",
        tree_only=True,
    )
    syncer = make_syncer(tmp_path, daemon.url, rsync=str(stub))
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert len(calls.read_text().split()) == 2
    assert trees_equal(daemon.root, syncer.config.target)


def _stub_exiting(tmp_path: Path, code: int, message: str) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    stub = stub_rsync(tmp_path, f"echo x >> {calls}\necho '{message}' >&2\nexit {code}\n")
    return stub, calls


@pytest.mark.parametrize(
    ("code", "message", "attempts"),
    [
        (10, "rsync error: error in socket IO (code 10)", 3),
        (12, "rsync error: error in rsync protocol data stream (code 12)", 3),
        (23, "rsync error: some files could not be transferred (code 23)", 3),
        (30, "rsync error: timeout in data send/receive (code 30)", 3),
        (35, "rsync error: timeout waiting for daemon connection (code 35)", 3),
        (5, "@ERROR: max connections (1) reached -- try again later", 3),
        (5, "@ERROR: auth failed on module up", 1),
        (5, '@ERROR: Unknown module "up"', 1),
        (1, "rsync error: syntax or usage error (code 1)", 1),
        (2, "rsync error: protocol incompatibility (code 2)", 1),
        (3, "rsync error: errors selecting input/output files (code 3)", 1),
        (4, "rsync error: requested action not supported (code 4)", 1),
        (11, "rsync error: error in file IO (code 11)", 1),
        (20, "rsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)", 1),
        (22, "rsync error: error allocating core memory buffers (code 22)", 1),
        (25, "rsync error: the --max-delete limit stopped deletions (code 25)", 1),
    ],
)
async def test_exit_code_policy_bounds_attempts(
    tmp_path: Path, code: int, message: str, attempts: int
) -> None:
    """docs/design.md#the-retry-policy with a stub rsync (real rsync cannot fail with a chosen
    code on demand):
    transient codes are tried `retries` (3) times, permanent ones once; the status keeps
    the code and rsync's last line."""
    stub, calls = _stub_exiting(tmp_path, code, message)
    syncer = make_syncer(tmp_path, "rsync://127.0.0.1:9/up/", rsync=str(stub))
    with pytest.raises(RsyncError) as caught:
        await syncer.sync(if_changed=True, trigger=COMMAND)
    assert caught.value.returncode == code
    assert len(calls.read_text().split()) == attempts
    recorded = json.loads(receiver_state_path(syncer.config).read_text())["last_sync"]
    assert recorded["returncode"] == code
    assert recorded["stderr_tail"] == [message]


async def test_transient_failure_then_success_completes(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """A transient failure on the first attempt is retried and the sync completes."""
    calls = tmp_path / "calls"
    stub = failing_once_rsync(
        tmp_path, calls, code=5, message="@ERROR: max connections (1) reached -- try again later"
    )
    syncer = make_syncer(tmp_path, daemon.url, rsync=str(stub))
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert trees_equal(daemon.root, syncer.config.target)


def _plant_leftovers(upstream: Path, target: Path) -> list[Path]:
    """Plant ``.~tmp~`` folders that rsync itself never revisits: it removes its staging
    folder only in folders whose files it transfers, so not in one the upstream emptied
    (the half-copied files' publish was dropped, its folder kept) nor in one that holds
    only subfolders."""
    for part in (upstream / "big").iterdir():
        part.unlink()
    leftovers = [target / "big" / RSYNC_TMP_DIR, target / "pool" / RSYNC_TMP_DIR]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "part1.bin").write_text("half a file")
    return leftovers


def _killed(state: Path) -> None:
    """Leave the in-progress note a SIGKILL leaves."""
    recorded = json.loads(state.read_text())
    recorded["in_progress"] = {"trigger": "killed", "started": "t", "pid": 999999}
    state.write_text(json.dumps(recorded))


def _ended(result: SyncResult) -> Callable[[Path], None]:
    def rewrite(state: Path) -> None:
        recorded = json.loads(state.read_text())
        recorded["last_sync"]["result"] = str(result)
        state.write_text(json.dumps(recorded))

    return rewrite


def _no_record(state: Path) -> None:
    state.unlink()


@pytest.mark.parametrize(
    "predecessor",
    [
        pytest.param(_killed, id="killed"),
        pytest.param(_ended(SyncResult.FAILED), id="failed"),
        pytest.param(_ended(SyncResult.CANCELLED), id="cancelled"),
        pytest.param(_no_record, id="no-record"),
    ],
)
async def test_sync_after_an_interrupted_one_sweeps_leftovers(
    tmp_path: Path, daemon: RsyncDaemon, predecessor: Callable[[Path], None]
) -> None:
    """docs/design.md#leftovers-of-an-interrupted-sync: .~tmp~ folders that rsync itself
    would not revisit stay after a sync that follows a completed one (that tree is not
    walked), and are gone after the first sync that follows one that did not complete."""
    publish(daemon.root, "1", {"big/part0.bin": "a part\n", "pool/a/file.rpm": "a package\n"})
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    leftovers = _plant_leftovers(daemon.root, syncer.config.target)
    publish(daemon.root, "2")
    await syncer.sync(if_changed=True, trigger=COMMAND)
    assert all(leftover.exists() for leftover in leftovers), "rsync should not remove these"
    predecessor(receiver_state_path(syncer.config))
    publish(daemon.root, "3")
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert not any(leftover.exists() for leftover in leftovers)
    assert not any(syncer.config.target.rglob(RSYNC_TMP_DIR))
    assert trees_equal(daemon.root, syncer.config.target)


def _marker_reads(log: Path) -> list[str]:
    """The logged rsync invocations that read the upstream marker (not the tree)."""
    return [line for line in log.read_text().splitlines() if "--delay-updates" not in line]


def _files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def _plant_symlink_to_a_secret(upstream: Path) -> None:
    secret_file = upstream.parent / "upstream-host.secret"
    write_secret(secret_file)
    (upstream / "CURRENT").unlink()
    (upstream / "CURRENT").symlink_to(secret_file)


def _replace_marker(upstream: Path, make: Callable[[Path], None]) -> None:
    (upstream / "CURRENT").unlink()
    make(upstream / "CURRENT")


@pytest.mark.parametrize(
    ("plant", "rsync_args", "reason"),
    [
        pytest.param(
            lambda up: (up / "CURRENT").write_text("2" * 10_240 + "\n"),
            [],
            "it is larger than 4096 bytes",
            id="10-KB",
        ),
        pytest.param(
            lambda up: (up / "CURRENT").write_text("2" * 2048 + "\n"),
            [],
            "its value is longer than 1024 bytes",
            id="2-KB-line",
        ),
        pytest.param(
            lambda up: (up / "CURRENT").write_bytes(b"2\x1b]0;pwned\x07\n"),
            [],
            "it contains a non-printable character (U+001B)",
            id="ESC",
        ),
        pytest.param(
            lambda up: (up / "CURRENT").write_bytes(b"2\n\xff\n"),
            [],
            "it is not valid UTF-8 text",
            id="invalid-UTF-8",
        ),
        pytest.param(
            _plant_symlink_to_a_secret,
            [],
            "it is not a regular file (a symbolic link, a FIFO or a device: rsync skipped it)",
            id="symlink",
        ),
        pytest.param(
            _plant_symlink_to_a_secret,
            ["-l"],
            "it is a symbolic link (not followed)",
            id="symlink-copied-by-rsync_args--l",
        ),
        pytest.param(
            lambda up: _replace_marker(up, os.mkfifo),
            [],
            "it is not a regular file (a symbolic link, a FIFO or a device: rsync skipped it)",
            id="FIFO",
        ),
        pytest.param(
            lambda up: _replace_marker(up, Path.mkdir),
            [],
            "it is a directory",
            id="directory",
        ),
    ],
)
async def test_hostile_upstream_marker_is_refused_and_nothing_installed(
    tmp_path: Path,
    daemon: RsyncDaemon,
    plant: Callable[[Path], object],
    rsync_args: list[str],
    reason: str,
) -> None:
    """A real rsync daemon serves a marker outside the rules (too big, too long, control
    characters, not UTF-8, a symlink to a secret, a FIFO, a folder) next to a new file: the
    sync fails at once with a clear, permanent error (one marker read, no retry, no tree
    transfer); the local tree and marker are as they were; status records why."""
    log = tmp_path / "rsync.log"
    syncer = make_syncer(
        tmp_path, daemon.url, rsync=str(counting_rsync(tmp_path, log)), rsync_args=rsync_args
    )
    await syncer.sync(if_changed=True, trigger=COMMAND)
    before = _files(syncer.config.target)
    calls = len(log.read_text().splitlines())
    (daemon.root / "dir0" / "new.rpm").write_text("published with a hostile marker\n")
    plant(daemon.root)
    with pytest.raises(UpstreamMarkerError) as caught:
        await syncer.sync(if_changed=True, trigger=COMMAND)
    source = f"{daemon.url}CURRENT"
    assert str(caught.value) == (
        f"refusing the upstream marker {source}: {reason}; the local marker was left as it was"
    )
    assert _files(syncer.config.target) == before
    assert syncer.local_marker() == "1"
    assert not (syncer.config.target / "CURRENT").is_symlink()
    assert len(log.read_text().splitlines()) == calls + 1, "one marker read, nothing more"
    assert "--max-size=4096" in _marker_reads(log)[-1]
    recorded = json.loads(receiver_state_path(syncer.config).read_text())["last_sync"]
    assert recorded["result"] == "failed"
    assert recorded["error"] == str(caught.value)


async def test_local_marker_symlink_is_not_followed_and_the_next_sync_replaces_it(
    tmp_path: Path, daemon: RsyncDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A symlink to a secret planted as the mirror's CURRENT: local_marker() does not follow
    it (no marker, with a warning), status shows it refused without the secret, and the next
    sync installs a real marker in its place, leaving the secret file alone."""
    caplog.set_level(logging.DEBUG)
    syncer = make_syncer(tmp_path, daemon.url)
    await syncer.sync(if_changed=True, trigger=COMMAND)
    secret_file = tmp_path / "elsewhere.secret"
    secret = write_secret(secret_file)
    current = syncer.config.target / "CURRENT"
    current.unlink()
    current.symlink_to(secret_file)
    assert syncer.local_marker() is None
    status = receiver_status(syncer.config)
    assert status["local_marker"] is None
    assert status["local_marker_error"] == "it is a symbolic link (not followed)"
    assert secret.removeprefix("whsec_") not in json.dumps(status)
    report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert not current.is_symlink()
    assert current.read_text() == "1\n"
    assert secret_file.read_text() == secret + "\n"
    assert any(
        record.getMessage().startswith(f"refusing marker {current}: it is a symbolic link")
        for record in caplog.records
    )
    for record in caplog.records:
        assert secret.removeprefix("whsec_") not in record.getMessage()
