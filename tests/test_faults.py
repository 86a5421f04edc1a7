"""Faults with real processes: a busy, a dead and a returning upstream; a full disk."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mirrorhook.errors import RsyncError, SyncError
from mirrorhook.retry import Backoff
from mirrorhook.syncer import Result, Syncer, state_path
from tests.helpers import (
    make_upstream,
    publish,
    receiver_config,
    rsync_daemon,
    trees_equal,
    wait_until,
)


def syncer_for(tmp_path: Path, upstream: str, *, retries: int = 6, **overrides: object) -> Syncer:
    config = receiver_config(tmp_path, upstream=upstream, retries=retries, **overrides).receiver
    assert config is not None
    return Syncer(config, backoff=Backoff(first=0.4, cap=0.8))


async def test_daemon_at_max_connections_is_retried_until_a_slot_frees(tmp_path: Path) -> None:
    """A daemon with `max connections = 1`, its slot held by a slow download: the sync is
    refused with "max connections" (exit 5), retries, and completes once the slot frees."""
    upstream = make_upstream(tmp_path / "upstream")
    (upstream / "big.bin").write_bytes(os.urandom(600_000))
    with rsync_daemon(tmp_path, upstream, max_connections=1) as daemon:
        hog = subprocess.Popen(
            ["rsync", "--bwlimit=400", f"{daemon.url}big.bin", str(tmp_path / "hog.bin")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.3)
        assert hog.poll() is None, "the hog should hold the only slot"
        syncer = syncer_for(tmp_path, daemon.url)
        report = await syncer.sync(if_changed=True, trigger="test")
        assert hog.wait(30) == 0
    assert report.result is Result.SYNCED
    assert trees_equal(upstream, syncer.config.target)


async def test_upstream_down_fails_cleanly_and_the_next_sync_recovers(tmp_path: Path) -> None:
    """The daemon stops: the sync retries per the policy, fails with the reason in the
    status; once the daemon is back, the next sync converges."""
    upstream = make_upstream(tmp_path / "upstream")
    with rsync_daemon(tmp_path, upstream) as daemon:
        syncer = syncer_for(tmp_path, daemon.url, retries=3)
        await syncer.sync(if_changed=True, trigger="first")
        port = daemon.port
    publish(upstream, "2", {"dir0/new.rpm": "new\n"})
    with pytest.raises(RsyncError) as caught:
        await syncer.sync(if_changed=True, trigger="while down")
    assert caught.value.transient  # connection refused: exit 10
    recorded = json.loads(state_path(syncer.config).read_text())["last_sync"]
    assert recorded["result"] == "failed"
    assert recorded["returncode"] == caught.value.returncode
    assert syncer.local_marker() == "1"
    with rsync_daemon(tmp_path / "again", upstream, port=port):
        report = await syncer.sync(if_changed=True, trigger="back")
    assert report.result is Result.SYNCED
    assert trees_equal(upstream, syncer.config.target)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_full_target_file_system_fails_clearly_and_keeps_the_old_tree(
    tmp_path: Path,
) -> None:
    """The mirror's file system fills up during a sync: a clear failure, the old tree and
    marker intact (rsync --delay-updates never replaced a file it could not finish)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        upstream = make_upstream(tmp_path / "upstream")
        with rsync_daemon(tmp_path, upstream) as daemon:
            syncer = syncer_for(tmp_path, daemon.url, retries=1, target=str(mount / "mirror"))
            await syncer.sync(if_changed=True, trigger="first")
            before = {p: p.read_bytes() for p in syncer.config.target.rglob("*") if p.is_file()}
            (upstream / "dir0" / "file0.rpm").write_bytes(os.urandom(3_000_000))
            publish(upstream, "2")
            with pytest.raises(SyncError) as caught:
                await syncer.sync(if_changed=True, trigger="disk full")
            assert (
                "No space left" in str(caught.value)
                or "code 11" in str(caught.value)
                or (isinstance(caught.value, RsyncError))
            )
            after = {p: p.read_bytes() for p in syncer.config.target.rglob("*") if p.is_file()}
            leftovers = [p for p in after if ".~tmp~" in p.parts]
            assert {p: b for p, b in after.items() if p not in leftovers} == before
            assert syncer.local_marker() == "1"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


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
