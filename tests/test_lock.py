"""One sync per tree, whatever the repository's name, and no leftovers in a tree a reload
leaves behind (docs/design.md#the-sync-lock, docs/design.md#leftovers-of-an-interrupted-sync).

The end-to-end tests run a real ``mirrorhook serve`` against a real rsync daemon and
reload it with SIGHUP; a wrapper around the real rsync logs when each tree transfer starts
and ends and which folder it writes, so a test sees whether two ever wrote one tree at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirrorhook import lock
from mirrorhook.errors import LockedError
from mirrorhook.receiver_config import ReceiverConfig
from tests.helpers import (
    MIRRORHOOK,
    Processes,
    at_once,
    free_port,
    make_upstream,
    marker_of,
    mirrorhook,
    publish,
    receiver_config,
    rsync_daemon,
    slow_rsync,
    tree_writes,
    trees_equal,
    wait_until,
    write_secret,
    writes_rsync,
)

SLOW = 4.0
"""Seconds a slowed tree transfer holds its tree: long enough to reload meanwhile."""


def tree_of(tmp: Path, target: Path, name: str) -> ReceiverConfig:
    """Repository ``name`` of one host (its locks in ``tmp/state/locks``) syncing ``target``."""
    loaded = receiver_config(tmp, upstream="rsync://127.0.0.1/up/").receivers
    assert loaded is not None
    state = tmp / "state" / "repos" / name
    return dataclasses.replace(loaded.repos[0], target=target, name=name, state_dir=state)


def test_a_tree_is_locked_whatever_the_repository_and_so_are_the_trees_it_nests_with(
    tmp_path: Path,
) -> None:
    """While a syncs srv/a, a sync of srv/a under another name is locked out, and so are
    syncs of srv (which holds it) and srv/a/b (inside it); srv/c beside it is not. The
    other way round too: srv/a/b held keeps srv/a out, not srv/a/c."""
    srv = tmp_path / "srv"
    with lock.hold(tree_of(tmp_path, srv / "a", "a")):
        for target in (srv / "a", srv, srv / "a" / "b"):
            assert lock.is_locked(tree_of(tmp_path, target, "other")), target
        assert not lock.is_locked(tree_of(tmp_path, srv / "c", "other"))
    with lock.hold(tree_of(tmp_path, srv / "a" / "b", "b")):
        assert lock.is_locked(tree_of(tmp_path, srv / "a", "a"))
        assert not lock.is_locked(tree_of(tmp_path, srv / "a" / "c", "c"))
    assert not lock.is_locked(tree_of(tmp_path, srv / "a", "a"))


def test_one_folder_reached_through_a_symlink_is_one_tree(tmp_path: Path) -> None:
    (tmp_path / "data" / "ius").mkdir(parents=True)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "ius").symlink_to(tmp_path / "data" / "ius")
    with lock.hold(tree_of(tmp_path, tmp_path / "data" / "ius", "a")):
        assert lock.is_locked(tree_of(tmp_path, tmp_path / "srv" / "ius", "b"))


def test_a_taken_lock_makes_the_holder_let_go_of_those_it_got_and_says_which(
    tmp_path: Path,
) -> None:
    """A sync of srv/b by repository a, while a holds its own lock for srv/a: refused,
    naming a's lock, and holding none of srv/b's locks afterwards (all or nothing)."""
    srv = tmp_path / "srv"
    with lock.hold(tree_of(tmp_path, srv / "a", "a")):
        with pytest.raises(LockedError) as caught, lock.hold(tree_of(tmp_path, srv / "b", "a")):
            pytest.fail("repository a's lock is taken")
        assert "(of repository a)" in str(caught.value)
        assert not lock.is_locked(tree_of(tmp_path, srv / "b", "b"))
    with lock.hold(tree_of(tmp_path, srv / "a", "a")):
        with pytest.raises(LockedError) as caught:
            lock.check_free(tree_of(tmp_path, srv / "a", "b"))
        assert f"(of the tree {srv / 'a'})" in str(caught.value)


@dataclass(frozen=True)
class Repo:
    """One ``[receiver.repos.NAME]`` table of a test's host."""

    name: str
    upstream: str
    tree: str
    rsync: Path
    extra: str = ""


class Host:
    """A mirror host whose config a test rewrites between reloads: two upstreams (``a``, and
    ``b`` with marker 7 and a file of its own) from one rsync daemon, trees in ``srv/``."""

    def __init__(self, tmp: Path, urls: dict[str, str]) -> None:
        self.tmp = tmp
        self.urls = urls
        self.port = free_port()
        self.config = tmp / "host.toml"
        self.log = tmp / "writes.log"
        self.slow = writes_rsync(tmp, self.log, "slow-rsync", delay=SLOW)
        self.fast = writes_rsync(tmp, self.log, "fast-rsync")
        write_secret(tmp / "hook.secret")

    def tree(self, name: str) -> Path:
        return self.tmp / "srv" / name

    def upstream(self, name: str) -> Path:
        return self.tmp / "up" / name

    def write(self, *repos: Repo, path: Path | None = None) -> Path:
        lines = [
            "[receiver]",
            f'listen = ["127.0.0.1:{self.port}"]',
            f'state_dir = "{self.tmp / "state"}"',
            "backoff = 0",
            "poll_interval = 0",
            "retries = 1",
        ]
        for repo in repos:
            lines += [
                f"[receiver.repos.{repo.name}]",
                f'secret_file = "{self.tmp / "hook.secret"}"',
                f'upstream = "{self.urls[repo.upstream]}"',
                f'target = "{self.tree(repo.tree)}"',
                f'rsync = "{repo.rsync}"',
                repo.extra,
            ]
        config = path or self.config
        config.write_text("\n".join(lines) + "\n")
        return config

    def writes(self, tree: str) -> int:
        """How many transfers into ``srv/TREE`` started."""
        return len(tree_writes(self.log, self.tree(tree)))

    def ended(self, tree: str) -> int:
        """How many transfers into ``srv/TREE`` ended."""
        return sum(write.end < float("inf") for write in tree_writes(self.log, self.tree(tree)))


def reloaded(processes: Processes, daemon: subprocess.Popen[bytes], times: int) -> None:
    """SIGHUP ``daemon`` and wait until it has applied its ``times``-th reload."""
    daemon.send_signal(signal.SIGHUP)
    wait_until(
        lambda: processes.log("host").count(" applied") == times, what=f"reload {times} applied"
    )


def tmp_folders(tree: Path) -> list[Path]:
    """rsync's staging folders in ``tree``."""
    return list(tree.rglob(".~tmp~"))


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (rsync forks a helper of its own)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A host of upstreams ``a`` (marker 1) and ``b`` (marker 7, a file ``a`` lacks)."""
    make_upstream(tmp_path / "up" / "a")
    make_upstream(tmp_path / "up" / "b", marker=None)
    publish(tmp_path / "up" / "b", "7", {"b-only/notes.txt": "only in b\n"})
    with rsync_daemon(tmp_path / "d", tmp_path / "up") as daemon:
        yield Host(tmp_path, {"a": f"{daemon.url}a/", "b": f"{daemon.url}b/"})


@pytest.mark.slow
def test_a_tree_moved_away_mid_sync_and_given_to_another_repository_has_one_rsync_at_a_time(
    host: Host, processes: Processes
) -> None:
    """SIGHUP while a's transfer into srv/x runs, with a config that moves a to srv/y and
    adds b at srv/x: b's sync waits for a's rsync to end (and says so) instead of writing
    srv/x beside it; srv/x ends as b's upstream with b's marker, srv/y as a's."""
    host.write(Repo("a", "a", "x", host.slow))
    daemon = processes.serve(host.config, "host")
    wait_until(lambda: host.writes("x") == 1, what="a's transfer into srv/x")
    host.write(Repo("a", "a", "y", host.fast), Repo("b", "b", "x", host.fast))
    reloaded(processes, daemon, 1)
    # b's marker is installed after its transfer ends (the marker's own read and install):
    # wait for it, not for the transfer's end alone (a race that failed once under CI).
    wait_until(
        lambda: (
            host.ended("x") == 2
            and marker_of(host.tree("x")) == "7"
            and marker_of(host.tree("y")) == "1"
        ),
        timeout=60,
        what="a's and b's transfers into srv/x, b's marker there, a's sync of srv/y",
    )
    assert at_once(tree_writes(host.log, host.tree("x"))) == []
    assert trees_equal(host.upstream("b"), host.tree("x"))
    assert trees_equal(host.upstream("a"), host.tree("y"))
    assert "b: another sync of this tree is running: waiting for it to finish" in processes.log(
        "host"
    )


@pytest.mark.slow
def test_a_repository_renamed_while_its_changed_predecessor_syncs_waits_for_that_rsync(
    host: Host, processes: Processes
) -> None:
    """A reload that changes a while it syncs srv/x (its old scheduler finishes that sync),
    then one that renames it b (same tree, b's upstream): b's sync waits for the finishing
    rsync instead of writing srv/x beside it; srv/x ends as b's upstream with b's marker.
    (A rename alone stops a's running sync before b starts, as any removal does.)"""
    host.write(Repo("a", "a", "x", host.slow))
    daemon = processes.serve(host.config, "host")
    wait_until(lambda: host.writes("x") == 1, what="a's transfer into srv/x")
    host.write(Repo("a", "a", "x", host.slow, extra="backoff = 1"))
    reloaded(processes, daemon, 1)
    host.write(Repo("b", "b", "x", host.fast))
    reloaded(processes, daemon, 2)
    wait_until(lambda: host.ended("x") == 2, timeout=60, what="a's and b's transfers")
    assert at_once(tree_writes(host.log, host.tree("x"))) == []
    wait_until(lambda: marker_of(host.tree("x")) == "7", what="b's marker installed")
    assert trees_equal(host.upstream("b"), host.tree("x"))


@pytest.mark.slow
def test_a_cron_sync_of_the_tree_under_another_name_exits_75_while_the_daemon_syncs_it(
    host: Host, processes: Processes
) -> None:
    """While the daemon's a syncs srv/x, `mirrorhook sync` of other configs sharing the
    state_dir — repository c at srv/x, and the single form at srv/x — exits 75 ("locked")
    and does nothing: no rsync of theirs starts, no sync is recorded, and the daemon's
    transfer was still running when they returned."""
    host.write(Repo("a", "a", "x", host.slow))
    processes.serve(host.config, "host")
    wait_until(lambda: host.writes("x") == 1, what="a's transfer into srv/x")
    cron_log = host.tmp / "cron-writes.log"
    cron_rsync = writes_rsync(host.tmp, cron_log, "cron-rsync")
    renamed = host.write(Repo("c", "b", "x", cron_rsync), path=host.tmp / "cron.toml")
    result = mirrorhook("sync", "-c", renamed)
    assert (result.returncode, result.stdout) == (75, "c  locked\n"), result.stderr
    single = host.tmp / "single.toml"
    single.write_text(renamed.read_text().replace("[receiver.repos.c]\n", ""))
    result = mirrorhook("sync", "-c", single)
    assert result.returncode == 75, result.stderr
    assert "another sync holds the lock" in result.stderr
    assert tree_writes(host.log, host.tree("x"))[0].end == float("inf")
    assert not cron_log.exists()
    assert not (host.tmp / "state" / "repos" / "c" / "receiver.json").exists()
    assert not (host.tmp / "state" / "receiver.json").exists()
    assert marker_of(host.tree("x")) is None


@pytest.mark.slow
def test_an_rsync_orphaned_by_a_killed_daemon_keeps_its_tree_locked_under_every_name(
    host: Host, processes: Processes
) -> None:
    """SIGKILL of `serve` while a's rsync writes srv/x: that rsync lives on with the
    tree's lock (the sync handed it over), so a cron sync of srv/x as repository c exits 75
    until the rsync has ended, and then syncs."""
    publish(host.upstream("a"), "2", {f"big/{i}.bin": "z" * 200_000 for i in range(6)})
    pids = host.tmp / "rsync.pids"
    host.write(Repo("a", "a", "x", slow_rsync(host.tmp, pids, bwlimit=400)))
    daemon = processes.serve(host.config, "host")
    wait_until(lambda: tmp_folders(host.tree("x")), what="a transfer staging in srv/x")
    daemon.kill()
    daemon.wait(10)
    orphan = int(pids.read_text().split()[-1])
    assert group_alive(orphan), "rsync should outlive the killed daemon"
    cron = host.write(Repo("c", "b", "x", host.fast), path=host.tmp / "cron.toml")
    result = mirrorhook("sync", "-c", cron)
    assert (result.returncode, result.stdout) == (75, "c  locked\n"), result.stderr
    wait_until(lambda: not group_alive(orphan), timeout=60, what="the orphan's end")
    result = mirrorhook("sync", "-c", cron)
    assert (result.returncode, result.stdout) == (0, "c  ok\n"), result.stderr
    assert marker_of(host.tree("x")) == "7"
    assert trees_equal(host.upstream("b"), host.tree("x"))


@pytest.mark.slow
def test_a_repository_removed_mid_transfer_leaves_no_tmp_folder_in_its_tree(
    host: Host, processes: Processes
) -> None:
    """A reload that removes a while its rsync stages files in srv/x/.../.~tmp~: the rsync
    is stopped, and once it has ended the tree is swept (the web server must not serve
    half a publish); the marker stays as it was."""
    publish(host.upstream("a"), "2", {f"big/{i}.bin": "z" * 200_000 for i in range(6)})
    pids = host.tmp / "rsync.pids"
    host.write(
        Repo("a", "a", "x", slow_rsync(host.tmp, pids, bwlimit=400)),
        Repo("b", "b", "z", host.fast, extra="enabled = false"),
    )
    daemon = processes.serve(host.config, "host")
    wait_until(lambda: tmp_folders(host.tree("x")), what="a transfer staging in srv/x")
    rsync = int(pids.read_text().split()[-1])
    host.write(Repo("b", "b", "z", host.fast, extra="enabled = false"))
    reloaded(processes, daemon, 1)
    assert "repository a removed" in processes.log("host")
    wait_until(lambda: not group_alive(rsync), what="the stopped rsync's end")
    wait_until(lambda: not tmp_folders(host.tree("x")), what="srv/x swept")
    assert "left behind by an interrupted rsync" in processes.log("host")
    assert marker_of(host.tree("x")) is None


@pytest.mark.slow
def test_a_tree_moved_away_after_a_failed_transfer_is_swept(
    host: Host, processes: Processes
) -> None:
    """A reload moves a from srv/x to srv/y while its rsync stages files in srv/x; that
    rsync then dies (SIGKILL), failing the sync: no sync will visit srv/x again, so it is
    swept once the rsync has ended; srv/y is synced."""
    publish(host.upstream("a"), "2", {f"big/{i}.bin": "z" * 200_000 for i in range(6)})
    pids = host.tmp / "rsync.pids"
    host.write(Repo("a", "a", "x", slow_rsync(host.tmp, pids, bwlimit=400)))
    daemon = processes.serve(host.config, "host")
    wait_until(lambda: tmp_folders(host.tree("x")), what="a transfer staging in srv/x")
    host.write(Repo("a", "a", "y", host.fast))
    reloaded(processes, daemon, 1)
    os.killpg(int(pids.read_text().split()[-1]), signal.SIGKILL)
    wait_until(lambda: marker_of(host.tree("y")) == "2", timeout=60, what="a's sync of srv/y")
    wait_until(lambda: not tmp_folders(host.tree("x")), what="srv/x swept")
    assert marker_of(host.tree("x")) is None
    state = host.tmp / "state" / "repos" / "a" / "receiver.json"

    def last_result() -> str:  # written with the sync's outcome, just after the marker
        return str(json.loads(state.read_text())["last_sync"]["result"])

    wait_until(lambda: last_result() == "synced", what="the sync of srv/y recorded")


@pytest.mark.slow
def test_the_sweep_of_a_removed_repositorys_tree_waits_for_the_sync_writing_it(
    host: Host, processes: Processes
) -> None:
    """A cron sync (repository c) stages files in srv/x while the daemon's a, never synced,
    waits for srv/x's lock; a reload removes a: the sweep of srv/x waits for the cron sync
    instead of deleting its staged files, so the cron sync completes with the whole tree."""
    publish(host.upstream("a"), "2", {f"big/{i}.bin": "z" * 200_000 for i in range(6)})
    pids = host.tmp / "rsync.pids"
    cron = host.write(
        Repo("c", "a", "x", slow_rsync(host.tmp, pids, bwlimit=400)), path=host.tmp / "cron.toml"
    )
    with (host.tmp / "cron.log").open("wb") as log:
        syncing = subprocess.Popen([*MIRRORHOOK, "sync", "-c", str(cron)], stderr=log)
    processes.running.append(syncing)
    wait_until(lambda: tmp_folders(host.tree("x")), what="the cron sync staging in srv/x")
    host.write(
        Repo("a", "a", "x", host.fast), Repo("b", "b", "z", host.fast, extra="enabled = false")
    )
    daemon = processes.serve(host.config, "host")
    wait_until(
        lambda: "a: another sync of this tree is running" in processes.log("host"),
        what="a waiting for srv/x",
    )
    host.write(Repo("b", "b", "z", host.fast, extra="enabled = false"))
    reloaded(processes, daemon, 1)
    assert syncing.wait(60) == 0, (host.tmp / "cron.log").read_text()
    assert marker_of(host.tree("x")) == "2"
    assert trees_equal(host.upstream("a"), host.tree("x"))
