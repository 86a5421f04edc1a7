"""Faults with real processes: a busy, a dead and a returning upstream; a full disk."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import signing
from mirrorhook.errors import RsyncError
from mirrorhook.receiver_records import SyncResult
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.retry import Backoff
from mirrorhook.status import format_receiver, receiver_status
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import COMMAND
from tests.helpers import (
    Processes,
    RsyncDaemon,
    free_port,
    make_upstream,
    marker_of,
    publish,
    receiver_config,
    receiver_toml,
    rsync_daemon,
    signed_webhook,
    trees_equal,
    until,
    wait_until,
)

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`


def syncer_for(tmp_path: Path, upstream: str, *, retries: int = 6, **overrides: object) -> Syncer:
    config = receiver_config(tmp_path, upstream=upstream, retries=retries, **overrides).receiver
    assert config is not None
    return Syncer(config, backoff=Backoff(first=0.4, cap=0.8))


async def test_daemon_at_max_connections_is_retried_until_a_slot_frees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon with `max connections = 1`, its slot held by a slow download: the sync is
    refused with "max connections" (exit 5), retries, and completes once the slot frees."""
    caplog.set_level(logging.WARNING, logger="mirrorhook.retry")
    upstream = make_upstream(tmp_path / "upstream")
    (upstream / "big.bin").write_bytes(os.urandom(600_000))
    with rsync_daemon(tmp_path, upstream, max_connections=1) as daemon:
        hog = subprocess.Popen(
            ["rsync", "--bwlimit=400", f"{daemon.url}big.bin", str(tmp_path / "hog.bin")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # rsync receives into a temporary ".hog.bin.XXXXXX": the hog holds the slot.
        await until(lambda: any(tmp_path.glob(".hog.bin.*")), 10)
        assert hog.poll() is None, "the hog should hold the only slot"
        syncer = syncer_for(tmp_path, daemon.url)
        report = await syncer.sync(if_changed=True, trigger=COMMAND)
        assert hog.wait(30) == 0
    assert report.result is SyncResult.SYNCED
    assert trees_equal(upstream, syncer.config.target)
    retries = [r.getMessage() for r in caplog.records if "; retrying in " in r.getMessage()]
    assert any("code 5" in m and "max connections" in m for m in retries), retries


async def test_upstream_down_fails_cleanly_and_the_next_sync_recovers(tmp_path: Path) -> None:
    """The daemon stops: the sync retries per the policy, fails with the reason in the
    status; once the daemon is back, the next sync converges."""
    upstream = make_upstream(tmp_path / "upstream")
    with rsync_daemon(tmp_path, upstream) as daemon:
        syncer = syncer_for(tmp_path, daemon.url, retries=3)
        await syncer.sync(if_changed=True, trigger=COMMAND)
        port = daemon.port
    publish(upstream, "2", {"dir0/new.rpm": "new\n"})
    with pytest.raises(RsyncError) as caught:
        await syncer.sync(if_changed=True, trigger=COMMAND)
    assert caught.value.transient  # connection refused: exit 10
    recorded = json.loads(receiver_state_path(syncer.config).read_text())["last_sync"]
    assert recorded["result"] == "failed"
    assert recorded["returncode"] == caught.value.returncode
    assert syncer.local_marker() == "1"
    with rsync_daemon(tmp_path / "again", upstream, port=port):
        report = await syncer.sync(if_changed=True, trigger=COMMAND)
    assert report.result is SyncResult.SYNCED
    assert trees_equal(upstream, syncer.config.target)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_full_target_file_system_fails_clearly_and_keeps_the_old_tree(
    tmp_path: Path,
) -> None:
    """The mirror's file system fills up during a sync: the failure names the cause (rsync's
    exit code 11 and its "No space left on device" line, in the error, the record and
    `status`), and the old tree and marker are intact byte for byte."""
    with small_tmpfs(tmp_path / "small", "2m") as mount:
        upstream = make_upstream(tmp_path / "upstream")
        with rsync_daemon(tmp_path, upstream) as daemon:
            syncer = syncer_for(tmp_path, daemon.url, retries=1, target=str(mount / "mirror"))
            await syncer.sync(if_changed=True, trigger=COMMAND)
            target = syncer.config.target
            before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
            (upstream / "dir0" / "file0.rpm").write_bytes(os.urandom(3_000_000))
            publish(upstream, "2")
            with pytest.raises(RsyncError) as caught:
                await syncer.sync(if_changed=True, trigger=COMMAND)
            after = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
            status = receiver_status(syncer.config)  # what `status --json` prints
            local = syncer.local_marker()
    failure = caught.value
    assert failure.returncode == 11, failure  # rsync's "error in file IO"
    assert not failure.transient
    cause = f'write failed on "{target}/dir0/file0.rpm": No space left on device (28)'
    assert cause in failure.cause
    assert str(failure) == f"rsync exited with code 11 (permanent): {failure.cause}"
    assert local == "1"
    assert status["local_marker"] == "1"
    last = status["last_sync"]
    assert last["result"] == "failed"
    assert last["returncode"] == 11
    assert last["error"] == str(failure)
    assert any(cause in line for line in last["stderr_tail"])
    shown = format_receiver(status).splitlines()  # what `status` prints
    assert any(line.startswith("error:") and line.endswith(str(failure)) for line in shown)
    assert any(line.startswith("rsync said:") and cause in line for line in shown)
    leftovers = [p for p in after if ".~tmp~" in p.parts]
    assert {p: b for p, b in after.items() if p not in leftovers} == before
    assert before[target / "CURRENT"] == b"1\n"


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only); unmounted afterwards."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the brim; return the file that does it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    error: OSError | None = None
    space = os.statvfs(folder)
    blocks = space.f_bavail * space.f_frsize // 4096 + 1024  # bounded: the free space, and some
    try:
        for _ in range(blocks):
            os.write(fd, b"x" * 4096)
    except OSError as err:
        error = err
    finally:
        os.close(fd)
    assert error is not None
    assert error.errno == errno.ENOSPC
    return filler


def post_webhook(port: int, secret: signing.Secret, value: str) -> tuple[int, dict[str, object]]:
    body, headers = signed_webhook(secret, value)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/hook", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def logged(processes: Processes, text: str, times: int) -> bool:
    return processes.log("receiver").count(text) >= times


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_state_dir_fails_syncs_clearly_and_the_next_webhook_after_freeing_it_syncs(
    tmp_path: Path, daemon: RsyncDaemon, processes: Processes
) -> None:
    """state_dir's file system full: every webhook still schedules a sync, which fails
    before rsync with ENOSPC named (its in-progress note cannot be written), leaving the
    tree and marker byte for byte; the daemon stays healthy with a warning naming it about
    its state notes; once space is freed the next webhook syncs (the scheduler died here
    before)."""
    with small_tmpfs(tmp_path / "small", "1m") as small:
        port = free_port()
        config = receiver_toml(tmp_path, upstream=daemon.url, port=port, state_dir=str(small))
        secret = signing.Secret.parse((tmp_path / "receiver.secret").read_text())
        processes.serve(config, "receiver")
        mirror = tmp_path / "mirror"
        wait_until(lambda: marker_of(mirror) == "1", what="the startup sync")
        before = {p: p.read_bytes() for p in mirror.rglob("*") if p.is_file()}
        filler = fill(small)
        publish(daemon.root, "2")
        for attempt in (1, 2, 3):
            # Each webhook makes a sync run (and fail): the scheduler is alive. Before the
            # fix its task died at the first note and every webhook was "queued" for ever.
            assert post_webhook(port, secret, "2")[0] == 202
            wait_until(
                partial(logged, processes, "sync failed (webhook", attempt),
                what=f"failed sync {attempt}",
            )
        cause = f"cannot note the sync in {small / 'receiver.json'}: No space left on device"
        failures = [
            line for line in processes.log("receiver").splitlines() if "sync failed (" in line
        ]
        assert len(failures) == 3, failures
        assert all(line.endswith(f"): {cause}") for line in failures), failures
        status, health = get_json(port, "/healthz")
        assert status == 200
        assert health["warnings"] == {
            "state notes": f"cannot write {small / 'receiver.json'}: No space left on device"
        }, health
        assert {p: p.read_bytes() for p in mirror.rglob("*") if p.is_file()} == before
        filler.unlink()
        assert post_webhook(port, secret, "2")[0] == 202
        wait_until(lambda: marker_of(mirror) == "2", what="the sync after freeing")
        assert trees_equal(daemon.root, mirror)
        wait_until(lambda: get_json(port, "/healthz")[1]["warnings"] == {}, what="no warnings")


def test_upstream_stopping_mid_transfer_fails_cleanly_then_the_poll_recovers(
    tmp_path: Path,
) -> None:
    """A real `serve` (poll every 2 s, 2 attempts): the upstream daemon stops during a
    transfer → the attempt and its retry fail, the status says so with rsync's exit code,
    the marker stays; the daemon comes back → the next poll converges the mirror."""
    upstream = make_upstream(tmp_path / "upstream")
    config_dir = tmp_path / "mirror-host"
    config_dir.mkdir()
    with rsync_daemon(tmp_path / "d1", upstream) as daemon:
        port = daemon.port
        config = receiver_config(
            config_dir,
            upstream=daemon.url,
            retries=2,
            poll_interval=2,
            poll_jitter=0,
            rsync_args=["--bwlimit=300"],
        )
        assert config.receiver is not None
        target = config.receiver.target
        log = config_dir / "serve.log"
        with log.open("w") as sink:
            serve = subprocess.Popen(
                [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config.path)], stderr=sink
            )
        try:
            wait_until((target / "CURRENT").exists, "the first sync")
            publish(upstream, "2", {f"big/{i}.bin": "q" * 300_000 for i in range(4)})
            wait_until(lambda: any(target.rglob(".~tmp~")), "a transfer in progress")
            daemon.stop()
            wait_until(lambda: "sync failed" in log.read_text(), "the failure", timeout=40)
            status = subprocess.run(
                [sys.executable, "-m", "mirrorhook", "status", "-c", str(config.path), "--json"],
                capture_output=True, text=True, check=False, timeout=30,
            )  # fmt: skip
            assert status.returncode == 1
            last = json.loads(status.stdout)["receiver"]["last_sync"]
            assert last["result"] == "failed"
            assert last["returncode"] in (10, 12, 20, 30, 35), last
            assert "retrying in" in log.read_text(), "the failed transfer was retried"
            assert (target / "CURRENT").read_text().strip() == "1"
            with rsync_daemon(tmp_path / "d2", upstream, port=port):
                wait_until(
                    lambda: (target / "CURRENT").read_text().strip() == "2", "the poll's sync"
                )
                assert trees_equal(upstream, target)
        finally:
            serve.terminate()
            serve.wait(30)
