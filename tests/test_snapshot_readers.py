"""Readers with teeth: clients of a yum-like tree read a mirror over HTTP from a real nginx
(Debian's, started here on a loopback port with ``contrib/nginx-snapshots.conf``) while
the mirror syncs publishes that add, rewrite and remove files.

The tree's index (``repodata/repomd.xml``) names its package list by hash, and the list
names each package with its hash, as rpm-md does. A reader fetches the index, then the
list, waits up to 1.2 s (a client that read the old index just before a switch asks for
its files a second after it), then every package, checking each hash. In place (today's
mode) they see 404s and wrong hashes: that proves the readers can fail; in snapshot mode
they see none, and ``target`` is never missing."""

from __future__ import annotations

import hashlib
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import (
    RsyncDaemon,
    mirrorhook,
    needs,
    receiver_toml,
    rsync_daemon,
)
from tests.web import YumLike, fetch, nginx

pytestmark = [pytest.mark.slow, needs("nginx", package="nginx")]

PUBLISHES = 6
READERS = 4


@dataclass
class Seen:
    """What the readers met: completed cycles, cycles across a publish, and errors."""

    cycles: int = 0
    across: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_repository(base: str, seen: Seen, stop: threading.Event, seed: int) -> None:
    """One client: index, list, a pause, every package, each hash checked."""
    chance = random.Random(seed)
    while not stop.is_set():
        try:
            index = fetch(f"{base}repodata/repomd.xml")
            _, path, sha = index.decode().split()
            listing = fetch(base + path)
            problems = [] if hashlib.sha256(listing).hexdigest() == sha else [f"{path}: hash"]
            time.sleep(chance.uniform(0.0, 1.2))
            for line in listing.decode().splitlines():
                name, want = line.split()
                if hashlib.sha256(fetch(base + name)).hexdigest() != want:
                    problems.append(f"{name}: wrong hash")
            moved = fetch(f"{base}repodata/repomd.xml") != index
        except (urllib.error.URLError, ValueError, OSError) as err:
            problems, moved = [f"{err}"], False
        with seen.lock:
            seen.cycles += 1
            seen.across += moved
            seen.errors += problems


def run_readers(tmp_path: Path, publish_mode: str) -> tuple[Seen, list[float]]:
    """Publish ``PUBLISHES`` times while ``READERS`` clients read through nginx; each publish
    synced by ``mirrorhook sync`` (its transfer slowed by rsync's own --bwlimit)."""
    upstream = YumLike(tmp_path / "upstream")
    upstream.publish()
    served = tmp_path / "srv"
    served.mkdir()
    seen, missing = Seen(), list[float]()
    with rsync_daemon(tmp_path / "daemon", upstream.root) as daemon:
        config = mirror_config(tmp_path, daemon, served / "el9", publish_mode)
        sync_once(config)
        stop = threading.Event()
        with nginx(tmp_path / "nginx", served, "el9") as base:
            threads = [
                threading.Thread(target=read_repository, args=(base, seen, stop, n), daemon=True)
                for n in range(READERS)
            ]
            threads.append(
                threading.Thread(
                    target=watch_target, args=(served / "el9", missing, stop), daemon=True
                )
            )
            for thread in threads:
                thread.start()
            try:
                for _ in range(PUBLISHES):
                    time.sleep(1.5)
                    upstream.publish()
                    sync_once(config)
                time.sleep(1.5)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(15)
    return seen, missing


def mirror_config(tmp_path: Path, daemon: RsyncDaemon, target: Path, mode: str) -> Path:
    return receiver_toml(
        tmp_path,
        upstream=daemon.url,
        target=str(target),
        publish=mode,
        rsync_args=["--bwlimit=300"],
    )


def sync_once(config: Path) -> None:
    done = mirrorhook("sync", "--config", config)
    assert done.returncode == 0, done.stderr


def watch_target(target: Path, missing: list[float], stop: threading.Event) -> None:
    """Resolve ``target`` in a tight loop: note each moment it does not resolve."""
    while not stop.is_set():
        if not (target / "CURRENT").exists():
            missing.append(time.monotonic())


def test_readers_in_place_see_a_mix_that_proves_they_can_fail(tmp_path: Path) -> None:
    seen, _ = run_readers(tmp_path, "in-place")
    assert seen.cycles > 10
    assert seen.errors, "in place, no reader met a removed or rewritten file: no teeth"


def test_readers_of_snapshots_never_see_a_mix_nor_a_missing_target(tmp_path: Path) -> None:
    seen, missing = run_readers(tmp_path, "snapshot")
    assert seen.errors == []
    assert seen.across > 0, "no reader read across a switch: the test proved nothing"
    assert seen.cycles > 10
    assert missing == []
