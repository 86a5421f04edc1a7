"""Many repositories in one ``mirrorhook serve``: real daemons, real rsync, real webhooks.

Three repositories from two rsync daemons, one receiver; a wrapper around the real rsync
records when each tree transfer starts and ends, so the test can see that ``max_syncs``
is never exceeded.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import signing
from mirrorhook.freshness import AFTER_PUBLISH
from tests.helpers import (
    Processes,
    StaticWeb,
    free_port,
    make_upstream,
    marker_of,
    mirrorhook,
    publish,
    real_rsync,
    rsync_daemon,
    signed_webhook,
    trees_equal,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.mirrors import HookMirror, mirror_in_thread

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`

REPOS = ("ius", "epel", "arch")


def timing_rsync(folder: Path, log: Path, delay: float) -> Path:
    """A wrapper that logs each tree transfer's start and end (marker reads pass through),
    slowed by ``delay`` seconds so that transfers would overlap if nothing prevented it."""
    real = real_rsync()
    path = folder / "timing-rsync"
    path.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--delay-updates*)\n'
        f'  echo "start $(date +%s.%N) $*" >> {log}\n'
        f"  sleep {delay}\n"
        f'  {real} "$@"; code=$?\n'
        f'  echo "end $(date +%s.%N) $*" >> {log}\n'
        "  exit $code;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    path.chmod(0o755)
    return path


def transfers(log: Path) -> list[tuple[float, float, str]]:
    """(start, end, repository) of every finished tree transfer, in start order."""
    open_runs: dict[str, float] = {}
    done = []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, stamp, args = line.split(" ", 2)
        repo = next(name for name in REPOS if f"/srv/{name}/" in args)
        if kind == "start":
            open_runs[repo] = float(stamp)
        else:
            done.append((open_runs.pop(repo), float(stamp), repo))
    return sorted(done)


def started(log: Path) -> list[str]:
    """The repository of every tree transfer that started, finished or not."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [
        next(name for name in REPOS if f"/srv/{name}/" in line)
        for line in lines
        if line.startswith("start ")
    ]


def overlapping(runs: list[tuple[float, float, str]]) -> list[tuple[str, str]]:
    return [
        (first[2], second[2]) for first, second in itertools.pairwise(runs) if second[0] < first[1]
    ]


class Host:
    """The mirror host of a test: its config, port, secrets and trees."""

    def __init__(self, tmp: Path, upstreams: dict[str, str], rsync: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.secrets = {
            name: signing.Secret.parse(write_secret(tmp / f"{name}.secret")) for name in REPOS
        }
        lines = [
            "[receiver]",
            f'listen = ["127.0.0.1:{self.port}"]',
            f'state_dir = "{tmp / "state"}"',
            "max_syncs = 1",
            "backoff = 0",
            "poll_interval = 0",
            "retries = 2",
            f'rsync = "{rsync}"',
        ]
        for name in REPOS:
            lines += [
                f"[receiver.repos.{name}]",
                f'secret_file = "{tmp / f"{name}.secret"}"',
                f'upstream = "{upstreams[name]}"',
                f'target = "{tmp / "srv" / name}"',
            ]
        self.config = tmp / "host.toml"
        self.config.write_text("\n".join(lines) + "\n")

    def tree(self, name: str) -> Path:
        return self.tmp / "srv" / name

    def post(self, path: str, secret: signing.Secret, value: str) -> tuple[int, dict[str, Any]]:
        body, headers = signed_webhook(secret, value)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/status", timeout=10) as r:
            document: dict[str, Any] = json.loads(r.read())
            return document


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """ius and epel from one rsync daemon, arch from another; each tree with marker 1."""
    roots = {name: make_upstream(tmp_path / "up" / name) for name in ("ius", "epel")}
    roots["arch"] = make_upstream(tmp_path / "up2" / "arch")
    with ExitStack() as stack:
        first = stack.enter_context(rsync_daemon(tmp_path / "d1", tmp_path / "up"))
        second = stack.enter_context(rsync_daemon(tmp_path / "d2", tmp_path / "up2"))
        urls = {
            "ius": f"{first.url}ius/",
            "epel": f"{first.url}epel/",
            "arch": f"{second.url}arch/",
        }
        roots_and_urls = {name: roots[name] for name in REPOS}
        for name in REPOS:
            (tmp_path / f"{name}.url").write_text(urls[name])
        yield roots_and_urls


def test_one_daemon_serves_three_repositories_each_with_its_own_hook_secret_and_tree(
    tmp_path: Path, upstreams: dict[str, Path], processes: Processes
) -> None:
    """Start-up checks sync all three, one at a time (max_syncs = 1); a webhook for one
    repository syncs only that tree; another repository's secret is 401 there; an unknown
    repository is 404; a burst for all three queues them (``waiting``) and never overlaps."""
    log = tmp_path / "transfers.log"
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    host = Host(tmp_path, urls, timing_rsync(tmp_path, log, delay=0.4))
    processes.serve(host.config, "host")
    wait_for_port(host.port)
    wait_until(
        lambda: all(marker_of(host.tree(name)) == "1" for name in REPOS),
        what="the start-up syncs of all three",
    )
    assert overlapping(transfers(log)) == []
    assert sorted(run[2] for run in transfers(log)) == sorted(REPOS)

    for name in REPOS:  # all three move upstream; only ius is told
        publish(upstreams[name], "2")
    assert host.post("/v1/hook/ius", host.secrets["ius"], "2") == (
        202,
        {"status": "scheduled", "delay": 0},
    )
    wait_until(lambda: marker_of(host.tree("ius")) == "2", what="ius at marker 2")
    # arch's own webhook is the witness: had ius's triggered the others, arch's would find
    # a sync pending or done (not "scheduled"), and epel's would have taken the only slot
    # before arch's (first come, first served) and logged its transfer.
    assert host.post("/v1/hook/arch", host.secrets["arch"], "2") == (
        202,
        {"status": "scheduled", "delay": 0},
    )
    wait_until(lambda: marker_of(host.tree("arch")) == "2", what="arch at marker 2")
    assert sorted(started(log)) == sorted([*REPOS, "ius", "arch"])
    assert marker_of(host.tree("epel")) == "1"
    assert trees_equal(upstreams["ius"], host.tree("ius"))

    assert host.post("/v1/hook/epel", host.secrets["ius"], "2")[0] == 401
    assert host.post("/v1/hook/nope", host.secrets["ius"], "2")[0] == 404
    status, answer = host.post("/v1/hook", host.secrets["ius"], "2")
    assert status == 404
    assert "/v1/hook/ius, /v1/hook/epel, /v1/hook/arch" in answer["error"]

    for name in REPOS:
        publish(upstreams[name], "3", {"added.txt": f"{name} 3\n"})
    for name in REPOS:
        assert host.post(f"/v1/hook/{name}", host.secrets[name], "3")[0] == 202
    wait_until(
        lambda: any(repo["state"] == "waiting" for repo in host.status()["repos"]),
        what="a repository waiting for the sync slot",
    )
    wait_until(
        lambda: all(marker_of(host.tree(name)) == "3" for name in REPOS),
        what="all three at marker 3",
    )
    assert overlapping(transfers(log)) == []
    for name in REPOS:
        assert trees_equal(upstreams[name], host.tree(name)), name
    wait_until(  # /v1/status is rendered at most once a second: it may be that late
        lambda: (
            {repo["name"]: repo["local_marker"] for repo in host.status()["repos"]}
            == dict.fromkeys(REPOS, "3")
        ),
        what="/v1/status showing all three at marker 3",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/metrics", timeout=10) as page:
        metrics = page.read().decode()
    for name in REPOS:
        assert f'mirrorhook_syncs_total{{repo="{name}",result="synced"}}' in metrics, name
        assert f'mirrorhook_marker_info{{marker="3",repo="{name}",side="local"}} 1.0' in metrics


def test_one_shot_sync_of_named_repositories_prints_a_line_each(
    tmp_path: Path, upstreams: dict[str, Path]
) -> None:
    """``mirrorhook sync epel arch`` syncs those two only; an unknown name is a config
    error; ``status`` shows one row per repository and exits 0."""
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    host = Host(
        tmp_path,
        urls,
        Path(real_rsync()),
    )
    result = mirrorhook("sync", "-c", host.config, "epel", "arch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["epel  ok", "arch  ok"]
    assert marker_of(host.tree("ius")) is None
    assert marker_of(host.tree("epel")) == marker_of(host.tree("arch")) == "1"
    unknown = mirrorhook("sync", "-c", host.config, "nope")
    assert unknown.returncode == 2
    assert "receiver.repos: no 'nope' (there are ius, epel, arch)" in unknown.stderr
    status = mirrorhook("status", "-c", host.config)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "repositories"
    assert lines[1].split()[:3] == ["REPO", "STATE", "MARKER"]
    assert [line.split()[0] for line in lines[2:5]] == ["ius", "epel", "arch"]


def test_exec_hooks_run_after_a_sync_with_what_happened_and_disabled_repos_are_skipped(
    tmp_path: Path, upstreams: dict[str, Path]
) -> None:
    """exec_on_success after a sync that installed a marker, exec_on_failure after one that
    failed, each with MIRRORHOOK_REPO/MARKER/RESULT; a failing hook does not undo the sync;
    a disabled repository is not synced."""
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    urls["arch"] = urls["arch"].replace("/arch/", "/missing/")  # fails: no such folder
    record = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $MIRRORHOOK_REPO $MIRRORHOOK_MARKER $MIRRORHOOK_RESULT" >> {record}\n'
        'echo "hook says hi"\n'
        "exit 3\n"
    )
    hook.chmod(0o755)
    rsync = Path(real_rsync())
    host = Host(tmp_path, urls, rsync)
    text = host.config.read_text().replace(
        "[receiver.repos.ius]",
        f'exec_on_success = ["{hook}", "ok"]\nexec_on_failure = ["{hook}", "bad"]\n'
        "[receiver.repos.ius]",
    )
    text = text.replace("[receiver.repos.epel]", "[receiver.repos.epel]\nenabled = false")
    host.config.write_text(text)
    result = mirrorhook("sync", "-c", host.config)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == ["ius  ok", "epel  disabled", "arch  failed"]
    assert sorted(record.read_text().splitlines()) == ["bad arch  failed", "ok ius 1 synced"]
    assert "hook says hi" in result.stderr
    assert "exited with status 3" in result.stderr
    assert marker_of(host.tree("ius")) == "1"  # the failing hook undid nothing
    assert marker_of(host.tree("epel")) is None


def test_a_disabled_repository_is_kept_unsynced_and_shown_disabled(
    tmp_path: Path, upstreams: dict[str, Path], processes: Processes
) -> None:
    """docs/design.md#many-repositories: with ``enabled = false`` epel stays in the config but
    gets no start-up check, its hook answers 200 {"status": "disabled"} and schedules
    nothing, and `status`, `status --json` and /v1/status show it ``disabled``; its last
    sync, failed before it was disabled, does not make `status` exit 1."""
    log = tmp_path / "transfers.log"
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    host = Host(tmp_path, urls, timing_rsync(tmp_path, log, delay=0.2))
    text = host.config.read_text()
    host.config.write_text(
        text.replace("[receiver.repos.epel]", "[receiver.repos.epel]\nenabled = false")
    )
    failed = {  # as a cron sync from before it was disabled wrote it
        "trigger": "cron",
        "started": "2026-11-30T10:00:00.000+00:00",
        "finished": "2026-11-30T10:00:01.500+00:00",
        "duration": 1.5,
        "result": "failed",
        "marker": None,
        "error": "rsync exited with code 10",
        "returncode": 10,
    }
    (tmp_path / "state" / "repos" / "epel").mkdir(parents=True)
    (tmp_path / "state" / "repos" / "epel" / "receiver.json").write_text(
        json.dumps({"last_sync": failed})
    )
    processes.serve(host.config, "host")
    wait_for_port(host.port)
    # One sync at a time, start-up checks one second apart in config order: once arch's
    # has synced, epel's would have run before it.
    wait_until(
        lambda: marker_of(host.tree("ius")) == marker_of(host.tree("arch")) == "1",
        what="the start-up syncs of ius and arch",
    )
    publish(upstreams["epel"], "2")
    publish(upstreams["ius"], "2")
    assert host.post("/v1/hook/epel", host.secrets["epel"], "2") == (200, {"status": "disabled"})
    assert host.post("/v1/hook/ius", host.secrets["ius"], "2")[0] == 202
    # A sync scheduled by epel's webhook would have taken the only slot before ius's.
    wait_until(lambda: marker_of(host.tree("ius")) == "2", what="ius at marker 2")
    assert sorted(started(log)) == ["arch", "ius", "ius"]
    assert marker_of(host.tree("epel")) is None
    assert not host.tree("epel").exists()

    served = {repo["name"]: repo for repo in host.status()["repos"]}
    assert [served[name]["enabled"] for name in REPOS] == [True, False, True]
    assert [served[name]["state"] for name in REPOS] == ["idle", "disabled", "idle"]
    assert served["epel"]["last_sync"] == failed
    shown = mirrorhook("status", "-c", host.config, "--json")
    assert shown.returncode == 0, shown.stdout
    rows = {repo["name"]: repo for repo in json.loads(shown.stdout)["repos"]}
    assert [(rows[name]["enabled"], rows[name]["state"]) for name in REPOS] == [
        (True, "idle"),
        (False, "disabled"),
        (True, "idle"),
    ]
    table = mirrorhook("status", "-c", host.config)
    assert table.returncode == 0, table.stdout
    states = {line.split()[0]: line.split()[1] for line in table.stdout.splitlines()[2:5]}
    assert states == {"ius": "idle", "epel": "disabled", "arch": "idle"}
    with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/metrics", timeout=10) as page:
        metrics = page.read().decode()
    assert 'mirrorhook_webhooks_total{outcome="disabled",repo="epel"} 1.0' in metrics


def test_sighup_adds_removes_and_changes_repositories_without_stopping_a_running_sync(
    tmp_path: Path, upstreams: dict[str, Path], processes: Processes
) -> None:
    """While ius syncs, SIGHUP with a config that removes arch, adds extra and changes
    epel: ius's sync finishes undisturbed, extra gets its start-up sync, arch's hook is
    404; then a config that does not load is refused and the running one stays."""
    log = tmp_path / "transfers.log"
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    host = Host(tmp_path, urls, timing_rsync(tmp_path, log, delay=1.5))
    host.config.write_text(host.config.read_text().replace("max_syncs = 1", "max_syncs = 3"))
    daemon = processes.serve(host.config, "host")
    wait_for_port(host.port)
    wait_until(
        lambda: all(marker_of(host.tree(name)) == "1" for name in REPOS),
        what="the start-up syncs",
    )
    publish(upstreams["ius"], "2")
    extra = make_upstream(tmp_path / "up" / "extra")
    assert host.post("/v1/hook/ius", host.secrets["ius"], "2")[0] == 202
    wait_until(lambda: len(transfers(log)) == 3 and "/srv/ius/" in log.read_text().splitlines()[-1])
    write_secret(tmp_path / "extra.secret")
    text = host.config.read_text()
    arch = text.index("[receiver.repos.arch]")
    text = text[:arch] + text[arch:].split("\n", 4)[4]  # its four lines gone
    text = text.replace("[receiver.repos.epel]", "[receiver.repos.epel]\nbackoff = 1")
    text += (
        "[receiver.repos.extra]\n"
        f'secret_file = "{tmp_path / "extra.secret"}"\n'
        f'upstream = "{urls["ius"].replace("/ius/", "/extra/")}"\n'
        f'target = "{tmp_path / "srv" / "extra"}"\n'
    )
    host.config.write_text(text)
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload: " in processes.log("host") and " applied" in processes.log("host"))
    wait_until(lambda: marker_of(host.tree("ius")) == "2", what="ius's sync, not interrupted")
    wait_until(lambda: marker_of(host.tree("extra")) == "1", what="extra's start-up sync")
    assert trees_equal(extra, host.tree("extra"))
    assert "sync cancelled" not in processes.log("host")
    assert host.post("/v1/hook/arch", host.secrets["arch"], "9")[0] == 404
    extra_secret = signing.Secret.parse((tmp_path / "extra.secret").read_text())
    assert host.post("/v1/hook/extra", extra_secret, "1")[0] == 200  # up to date
    log_text = processes.log("host")
    for line in ("repository arch removed", "repository epel changed", "repository extra added"):
        assert line in log_text, line
    host.config.write_text(text.replace("backoff = 1", "backoff = -1"))
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused, the running config stays" in processes.log("host"))
    assert "receiver.repos.epel.backoff" in processes.log("host")
    assert host.post("/v1/hook/extra", extra_secret, "1")[0] == 200
    assert daemon.poll() is None


def test_a_hub_repository_cascades_to_its_leaf(
    tmp_path: Path, upstreams: dict[str, Path], processes: Processes
) -> None:
    """top → hub (repository ius, in both sections, its publisher root left out) → leaf:
    a publish upstream reaches the leaf through the hub's own sync and announcement."""
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    hub_tree = tmp_path / "hub" / "srv"
    hub_tree.mkdir(parents=True)
    hub_port, leaf_port = free_port(), free_port()
    for name in ("hub-ius", "leaf"):
        write_secret(tmp_path / f"{name}.secret")
    with rsync_daemon(tmp_path / "dh", hub_tree) as hub_daemon:
        leaf = tmp_path / "leaf"
        leaf.mkdir()
        (leaf / "mirrorhook.toml").write_text(
            "[receiver]\n"
            f'listen = ["127.0.0.1:{leaf_port}"]\n'
            f'secret_file = "{tmp_path / "leaf.secret"}"\n'
            f'upstream = "{hub_daemon.url}ius/"\n'
            f'target = "{leaf / "mirror"}"\n'
            f'state_dir = "{leaf / "state"}"\n'
            "backoff = 0\npoll_interval = 0\n"
        )
        hub = tmp_path / "hub" / "hub.toml"
        hub.write_text(
            "[receiver]\n"
            f'listen = ["127.0.0.1:{hub_port}"]\n'
            f'state_dir = "{tmp_path / "hub" / "rstate"}"\n'
            "backoff = 0\npoll_interval = 0\n"
            "[receiver.repos.ius]\n"
            f'secret_file = "{tmp_path / "hub-ius.secret"}"\n'
            f'upstream = "{urls["ius"]}"\n'
            f'target = "{hub_tree / "ius"}"\n'
            "[publisher]\n"
            f'state_dir = "{tmp_path / "hub" / "pstate"}"\n'
            "rescan = 5\n"
            "[publisher.repos.ius]\n"
            "[[publisher.repos.ius.mirrors]]\n"
            'name = "leaf"\n'
            f'url = "http://127.0.0.1:{leaf_port}/v1/hook"\n'
            f'secret_file = "{tmp_path / "leaf.secret"}"\n'
        )
        top = tmp_path / "top.toml"
        top.write_text(
            "[publisher]\n"
            f'root = "{upstreams["ius"]}"\n'
            f'state_dir = "{tmp_path / "top-state"}"\n'
            "rescan = 5\n"
            "[[publisher.mirrors]]\n"
            'name = "hub"\n'
            f'url = "http://127.0.0.1:{hub_port}/v1/hook/ius"\n'
            f'secret_file = "{tmp_path / "hub-ius.secret"}"\n'
        )
        processes.serve(leaf / "mirrorhook.toml", "leaf")
        wait_for_port(leaf_port)
        processes.serve(hub, "hub")
        wait_for_port(hub_port)
        processes.serve(top, "top")
        trees = (hub_tree / "ius", leaf / "mirror")
        wait_until(lambda: all(marker_of(tree) == "1" for tree in trees), what="convergence")
        publish(upstreams["ius"], "2", {"new/pkg-2.rpm": "added\n"})
        wait_until(lambda: all(marker_of(tree) == "2" for tree in trees), what="the cascade")
        for tree in trees:
            assert trees_equal(upstreams["ius"], tree), tree
        assert "delivered marker '2' to hub" in processes.log("top")
        assert "delivered marker '2' to leaf" in processes.log("hub")
        assert "(repository ius)" in processes.log("hub")


def test_one_publisher_announces_each_repository_to_its_own_mirrors(
    tmp_path: Path, processes: Processes
) -> None:
    """Two published trees, one mirror each: a publish in one reaches its mirror only, with
    data.repo naming the repository; `notify NAME` announces that one and prints its table."""
    roots = {name: make_upstream(tmp_path / "pub" / name) for name in ("a", "b")}
    ports = {name: free_port() for name in roots}
    for name in roots:
        write_secret(tmp_path / f"m-{name}.secret")
    lines = ["[publisher]", f'state_dir = "{tmp_path / "pstate"}"', "rescan = 5"]
    for name, root in roots.items():
        lines += [
            f"[publisher.repos.{name}]",
            f'root = "{root}"',
            f"[[publisher.repos.{name}.mirrors]]",
            f'name = "m-{name}"',
            f'url = "http://127.0.0.1:{ports[name]}/v1/hook"',
            f'secret_file = "{tmp_path / f"m-{name}.secret"}"',
        ]
    config = tmp_path / "pub.toml"
    config.write_text("\n".join(lines) + "\n")
    mirrors = {
        name: HookMirror(signing.Secret.parse((tmp_path / f"m-{name}.secret").read_text()))
        for name in roots
    }
    with ExitStack() as stack:
        for name, mirror in mirrors.items():
            stack.enter_context(mirror_in_thread(mirror, ports[name]))
        processes.serve(config, "publisher")
        wait_until(lambda: all(m.values() == ["1"] for m in mirrors.values()), what="marker 1")
        publish(roots["a"], "2")
        wait_until(lambda: mirrors["a"].values() == ["1", "2"], what="a's publish")
        time.sleep(0.3)
        assert mirrors["b"].values() == ["1"]
        assert {hook.repo for hook in mirrors["a"].received} == {"a"}
        result = mirrorhook("notify", "-c", config, "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "repository b: marker '1'"
    assert mirrors["b"].values()[-1] == "1"
    assert len(mirrors["b"].received) == 2


def test_sighup_adds_and_removes_published_repositories(
    tmp_path: Path, processes: Processes
) -> None:
    """A publisher host reloaded with repository b added and a removed: b's marker is
    announced to its mirror at once; a publish in a reaches nobody any more."""
    roots = {name: make_upstream(tmp_path / "pub" / name) for name in ("a", "b")}
    ports = {name: free_port() for name in roots}

    def section(name: str) -> list[str]:
        write_secret(tmp_path / f"m-{name}.secret")
        return [
            f"[publisher.repos.{name}]",
            f'root = "{roots[name]}"',
            f"[[publisher.repos.{name}.mirrors]]",
            f'name = "m-{name}"',
            f'url = "http://127.0.0.1:{ports[name]}/v1/hook"',
            f'secret_file = "{tmp_path / f"m-{name}.secret"}"',
        ]

    listen = free_port()
    head = [
        "[publisher]",
        f'state_dir = "{tmp_path / "pstate"}"',
        "rescan = 5",
        f'listen = ["127.0.0.1:{listen}"]',
    ]
    config = tmp_path / "pub.toml"
    config.write_text("\n".join([*head, *section("a")]) + "\n")
    b_section = section("b")
    mirrors = {
        name: HookMirror(signing.Secret.parse((tmp_path / f"m-{name}.secret").read_text()))
        for name in roots
    }
    with ExitStack() as stack:
        for name, mirror in mirrors.items():
            stack.enter_context(mirror_in_thread(mirror, ports[name]))
        daemon = processes.serve(config, "publisher")
        wait_until(lambda: mirrors["a"].values() == ["1"], what="a announced")
        config.write_text("\n".join([*head, *b_section]) + "\n")
        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: mirrors["b"].values() == ["1"], what="b announced after the reload")
        log = processes.log("publisher")
        assert "published repository a removed" in log
        assert "published repository b added" in log
        # The mirror list and the page follow the reload.
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/mirrors?repo=b") as page:
            assert json.loads(page.read())["mirrors"][0]["name"] == "m-b"
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/mirrors?repo=a")
        gone.value.close()
        assert gone.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/") as page:
            assert 'data-mirror="m-b"' in page.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/status") as page:
            status = json.loads(page.read())
        assert [tree["repo"] for tree in status["publishers"]] == ["b"]
        publish(roots["a"], "2")
        time.sleep(1.0)  # a's watcher, had it survived, reacts within milliseconds
        assert mirrors["a"].values() == ["1"]
        assert daemon.poll() is None


def test_randomize_waits_once_for_all_repositories(
    tmp_path: Path, upstreams: dict[str, Path]
) -> None:
    """`sync --randomize N` over several repositories sleeps once, not once per repository."""
    urls = {name: (tmp_path / f"{name}.url").read_text() for name in REPOS}
    rsync = real_rsync()
    host = Host(tmp_path, urls, Path(rsync))
    result = mirrorhook("sync", "-c", host.config, "--randomize", "1", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("sleeping") == 1, result.stderr
    assert result.stdout.splitlines() == [f"{name}  ok" for name in REPOS]


def test_a_serving_publisher_checks_its_mirrors_and_serves_the_mirror_list(
    tmp_path: Path, processes: Processes
) -> None:
    """A real `serve` publisher with a webhook mirror and a cron mirror, both served over
    HTTP by real static servers: after a publish, /mirrorlist lists the one that serves it."""
    root = make_upstream(tmp_path / "pub")
    hook_port, listen = free_port(), free_port()
    write_secret(tmp_path / "m.secret")
    with ExitStack() as stack:
        webs = {name: stack.enter_context(StaticWeb(tmp_path / name)) for name in ("m", "cron")}
        for web in webs.values():
            (web.folder / "CURRENT").write_text("1\n")
        config = tmp_path / "pub.toml"
        config.write_text(
            "[publisher]\n"
            f'root = "{root}"\nstate_dir = "{tmp_path / "pstate"}"\n'
            f'listen = ["127.0.0.1:{listen}"]\nrescan = 5\n'
            "[[publisher.mirrors]]\n"
            f'name = "m"\nurl = "http://127.0.0.1:{hook_port}/v1/hook"\n'
            f'secret_file = "{tmp_path / "m.secret"}"\n'
            f'check_url = "{webs["m"].url}/CURRENT"\n'
            'urls = ["https://m.example/repo/"]\n'
            "[[publisher.mirrors]]\n"
            f'name = "cron"\nsecret_file = "{tmp_path / "m.secret"}"\n'
            f'check_url = "{webs["cron"].url}/CURRENT"\n'
            'urls = ["https://cron.example/repo/"]\n'
        )
        mirror = HookMirror(signing.Secret.parse((tmp_path / "m.secret").read_text()))
        with mirror_in_thread(mirror, hook_port):
            processes.serve(config, "publisher")
            wait_for_port(listen)
            base = f"http://127.0.0.1:{listen}"

            def listed() -> list[str]:
                with urllib.request.urlopen(f"{base}/mirrorlist", timeout=10) as page:
                    text: str = page.read().decode()
                return text.splitlines()[1:]

            wait_until(
                lambda: listed() == ["https://m.example/repo/", "https://cron.example/repo/"],
                what="both fresh at marker 1",
            )
            (webs["m"].folder / "CURRENT").write_text("2\n")  # the webhook mirror syncs at once
            publish(root, "2")
            wait_until(lambda: mirror.values()[-1:] == ["2"], what="the webhook")
            wait_until(lambda: listed() == ["https://m.example/repo/"], what="m fresh, cron behind")

            def status_rows() -> dict[str, dict[str, Any]]:
                status = mirrorhook("status", "-c", config, "--json")
                return {m["name"]: m for m in json.loads(status.stdout)["publisher"]["mirrors"]}

            # `status` reads the record the daemon writes within a second of a check.
            wait_until(lambda: status_rows()["m"]["state"] == "fresh", what="the record written")
            rows = status_rows()
            assert (rows["m"]["state"], rows["cron"]["state"]) == ("fresh", "behind")
            assert rows["cron"]["serving"] == "1"


@pytest.mark.parametrize("form", ["single", "host"])
def test_a_mirror_reports_its_sync_and_the_publisher_sees_it_fresh(
    tmp_path: Path, processes: Processes, form: str
) -> None:
    """publisher (public_url) → a real receiver: the webhook carries the report URL, the
    receiver syncs and reports, the publisher checks the mirror's check_url at once. With
    the publisher's host form the single-form receiver reports under the upstream's name
    for the repository (``ius``), which the webhook told it: its reports were refused
    ("no such mirror here") and it turned fresh only at the next scheduled check."""
    root = make_upstream(tmp_path / "up")
    hook_port, listen = free_port(), free_port()
    write_secret(tmp_path / "m.secret")
    with rsync_daemon(tmp_path / "d", root) as daemon, StaticWeb(tmp_path / "mirror") as web:
        mirror_tree = web.folder
        receiver = tmp_path / "receiver.toml"
        receiver.write_text(
            "[receiver]\n"
            f'listen = ["127.0.0.1:{hook_port}"]\n'
            f'secret_file = "{tmp_path / "m.secret"}"\n'
            f'upstream = "{daemon.url}"\n'
            f'target = "{mirror_tree}"\n'
            f'state_dir = "{tmp_path / "rstate"}"\n'
            "backoff = 0\npoll_interval = 0\n"
        )
        publisher = tmp_path / "publisher.toml"
        tree, entry, query = (
            ("", "[[publisher.mirrors]]", "")
            if form == "single"
            else ("[publisher.repos.ius]\n", "[[publisher.repos.ius.mirrors]]", "?repo=ius")
        )
        publisher.write_text(
            "[publisher]\n"
            f'state_dir = "{tmp_path / "pstate"}"\n'
            f'listen = ["127.0.0.1:{listen}"]\n'
            f'public_url = "http://127.0.0.1:{listen}"\n'
            f'{tree}root = "{root}"\nrescan = 5\n'
            f"{entry}\n"
            f'name = "m"\nurl = "http://127.0.0.1:{hook_port}/v1/hook"\n'
            f'secret_file = "{tmp_path / "m.secret"}"\n'
            f'check_url = "{web.url}/CURRENT"\n'
        )
        processes.serve(receiver, "receiver")
        wait_for_port(hook_port)
        processes.serve(publisher, "publisher")
        wait_for_port(listen)

        def state_at_publisher() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/mirrors{query}") as page:
                document = json.loads(page.read())
            return str(document["mirrors"][0]["state"]) + " " + str(document["newest"])

        wait_until(lambda: state_at_publisher() == "fresh 1", what="fresh at marker 1")
        publish(root, "2")
        wait_until(lambda: state_at_publisher() == "fresh 2", what="fresh at marker 2")
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/mirrors{query}") as page:
            lag = json.loads(page.read())["mirrors"][0]["lag"]
        assert lag < AFTER_PUBLISH[0]  # the report's check, not the one scheduled after 5 s
        assert "report from m: synced ('2')" in processes.log("publisher")
        recorded = json.loads((tmp_path / "rstate" / "receiver.json").read_text())
        assert recorded["report"] == {
            "url": f"http://127.0.0.1:{listen}/v1/report",
            "mirror": "m",
            "repo": None if form == "single" else "ius",
        }
