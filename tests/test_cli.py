"""The command line as users run it: real ``mirrorhook`` processes, a real rsync daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorhook import signing
from mirrorhook.config import load_config
from mirrorhook.trigger import Via
from tests.helpers import (
    MIRRORHOOK,
    RsyncDaemon,
    counting_rsync,
    free_port,
    key_pair,
    marker_of,
    mirror_secret,
    publish,
    publisher_toml,
    receiver_toml,
    slow_rsync,
    stop_processes,
    tree_invocations,
    trees_equal,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.mirrors import HookMirror, always, mirror_in_thread

REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIRRORHOOK, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def local_marker(tmp: Path) -> str | None:
    return marker_of(tmp / "mirror")


def port_of(config: Path) -> int:
    receiver = load_config(config).receiver
    assert receiver is not None
    port = receiver.listen[0].port
    assert port is not None
    return port


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Started ``mirrorhook serve`` processes; any left running are stopped at the end (TERM
    first, so that each stops its own rsync)."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    stop_processes(processes)


def start_serve(
    processes: list[subprocess.Popen[str]], config: Path, log: Path
) -> subprocess.Popen[str]:
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*MIRRORHOOK, "serve", "-c", str(config)], stdout=sink, stderr=sink, text=True
        )
    processes.append(process)
    wait_for_port(port_of(config))
    return process


# --- one-shot commands -------------------------------------------------------------------


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("mirrorhook ")
    for command in ("serve", "notify", "sync", "status", "check-config"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert "--config" in result.stdout
    serve = run("serve", "--help").stdout
    assert "[receiver]" in serve
    assert "[publisher]" in serve


def test_commands_that_read_no_config_refuse_a_config_option() -> None:
    """``secret``, ``keygen`` and ``demo`` read no config: a ``-c`` given to them is an
    error saying so, never silently ignored."""
    for command in ("secret", "keygen", "demo"):
        helped = run(command, "--help")
        assert helped.returncode == 0
        assert "--config" not in helped.stdout
        refused = run(command, "-c", "/etc/mirrorhook/mirrorhook.toml")
        assert refused.returncode == 2
        assert "unrecognized arguments: -c" in refused.stderr


def test_secret_prints_a_usable_secret() -> None:
    result = run("secret")
    assert result.returncode == 0
    secret = signing.Secret.parse(result.stdout)
    assert len(secret.key) == 32


def test_sync_if_changed_is_the_cron_drop_in(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """sync --if-changed copies a stale mirror (exit 0), then does nothing when current."""
    log = tmp_path / "rsync.log"
    config = receiver_toml(tmp_path, upstream=daemon.url, rsync=str(counting_rsync(tmp_path, log)))
    first = run("sync", "-c", config, "--if-changed", "--randomize", "0")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{tmp_path / 'mirror'}  ok\n"  # the host form's shape, one tree
    assert trees_equal(daemon.root, tmp_path / "mirror")
    second = run("sync", "-c", config, "--if-changed", "--randomize", "1")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stderr
    assert len(tree_invocations(log)) == 1


def test_randomized_cron_sync_sleeps_then_syncs_and_reports_failures(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """--if-changed --randomize: a stale mirror is synced after the sleep; when the upstream
    cannot be read, the pre-check fails with one line on stderr and status records it."""
    config = receiver_toml(tmp_path, upstream=daemon.url)
    result = run("sync", "-c", config, "--if-changed", "--randomize", "0.2")
    assert result.returncode == 0, result.stderr
    assert "sleeping" in result.stderr
    assert trees_equal(daemon.root, tmp_path / "mirror")
    broken = receiver_toml(tmp_path, upstream=daemon.url.replace("/up/", "/nope/"))
    result = run("sync", "-c", broken, "--if-changed", "--randomize", "0.2")
    assert result.returncode == 1
    assert "Unknown module" in result.stderr
    assert "sleeping" not in result.stderr
    status = run("status", "-c", broken)
    assert status.returncode == 1
    assert "Unknown module" in status.stdout


def test_sync_failure_exits_1_and_status_reports_it(tmp_path: Path) -> None:
    """A failed sync exits 1; status shows the error and exits 1 too (also in JSON)."""
    config = receiver_toml(tmp_path, upstream=str(tmp_path / "unmounted"))
    result = run("sync", "-c", config)
    assert result.returncode == 1
    assert result.stdout == f"{tmp_path / 'mirror'}  failed\n"
    assert "refusing to sync" in result.stderr
    assert "Traceback" not in result.stderr
    status = run("status", "-c", config)
    assert status.returncode == 1
    assert "refusing to sync" in status.stdout
    machine = run("status", "-c", config, "--json")
    assert machine.returncode == 1
    assert json.loads(machine.stdout)["receiver"]["last_sync"]["result"] == "failed"


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    """check-config exits 2 and names the file and key of each problem, one per line."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[receiver]\nlisten = ["nowhere"]\nupstream = "ftp://x/"\ntarget = "relative"\n'
        'state_dir = "/tmp/x"\nsecret_file = "/nonexistent"\nbakoff = 3\n'
    )
    result = run("check-config", "-c", config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    for key in ("listen", "upstream", "target", "secret_file", "bakoff"):
        assert any(line.startswith(f"{config}: receiver.{key}: ") for line in lines), key
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run("sync", "-c", tmp_path / "absent.toml")
    assert result.returncode == 2
    assert "absent.toml" in result.stderr


def test_config_from_environment(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """Without -c, $MIRRORHOOK_CONFIG names the config file."""
    config = receiver_toml(tmp_path, upstream=daemon.url)
    result = subprocess.run(
        [*MIRRORHOOK, "check-config"],
        capture_output=True,
        text=True,
        env={**os.environ, "MIRRORHOOK_CONFIG": str(config)},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rsync command" in result.stdout
    # The printed command is the one that runs: TCP_NODELAY for a daemon upstream.
    command = next(line for line in result.stdout.splitlines() if "rsync command" in line)
    assert "--sockopts=TCP_NODELAY" in command


def test_check_config_shows_the_trace_and_lastsync_files(tmp_path: Path) -> None:
    """Where each file goes, and the rsync filters that keep them out of the transfer."""
    config = receiver_toml(
        tmp_path,
        upstream="rsync://mirror.example.org/debian/",
        trace="project/trace/mirror.example.org",
        lastsync="lastsync",
    )
    result = run("check-config", "-c", config)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "mirror"
    assert f"  trace file     {target}/project/trace/mirror.example.org (Debian" in result.stdout
    assert f"  lastsync file  {target}/lastsync (Unix time" in result.stdout
    command = next(line for line in result.stdout.splitlines() if "rsync command" in line)
    for name in ("CURRENT", "project/trace/mirror.example.org", "lastsync"):
        assert f"--filter=P /{name} --exclude=/{name}" in command


def test_contrib_host_example_loads(tmp_path: Path) -> None:
    """contrib/host.toml: three repositories, host-level defaults, one disabled."""
    text = (REPO / "contrib" / "host.toml").read_text().replace("/etc/mirrorhook/", f"{tmp_path}/")
    for name in ("ius", "epel", "archlinux", "leaf-a"):
        write_secret(tmp_path / f"{name}.secret")
    (tmp_path / "exclude.txt").write_text("")
    config = tmp_path / "host.toml"
    config.write_text(text)
    host = load_config(config).receivers
    assert host is not None
    assert [(repo.name, repo.backoff, repo.enabled, repo.max_delete) for repo in host.repos] == [
        ("ius", 30, True, 10_000),
        ("epel", 120, True, 20_000),
        ("archlinux", 30, False, 10_000),
    ]
    assert host.repos[2].lastsync == "lastsync"
    publishers = load_config(config).publishers
    assert publishers is not None
    assert publishers.repos[0].root == host.repos[0].target  # ius, the hub repository
    result = run("check-config", "-c", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "    hook           /v1/hook/epel" in lines
    assert "  send upstream  https://YOUR-HOST[/PREFIX]/v1/hook/NAME" in result.stdout
    assert "    rsync command  rsync -aH " in result.stdout  # label and value apart


@pytest.mark.parametrize(
    "example", ["receiver.toml", "publisher.toml", "hub.toml", "subscriber.toml"]
)
def test_contrib_examples_load(tmp_path: Path, example: str) -> None:
    """Each contrib/ example is valid once the files it names exist (paths moved into tmp)."""
    text = (REPO / "contrib" / example).read_text().replace("/etc/mirrorhook/", f"{tmp_path}/etc/")
    (tmp_path / "etc").mkdir()
    for name in ("receiver", "mirror-a", "mirror-b", "leaf-a", "leaf-b"):
        write_secret(tmp_path / "etc" / f"{name}.secret")
    key_pair(tmp_path / "etc", "upstream")
    (tmp_path / "etc" / "exclude.txt").write_text((REPO / "contrib" / "exclude.txt").read_text())
    config = tmp_path / example
    config.write_text(text)
    loaded = load_config(config)
    if example != "publisher.toml":
        assert loaded.receiver is not None
        assert loaded.receiver.upstream.startswith("rsync://")
    if example == "subscriber.toml":
        assert loaded.receiver is not None
        assert loaded.receiver.listen == ()
        assert [entry.via for entry in loaded.receiver.subscribe] == [Via.EVENTS]
    elif example != "receiver.toml":
        assert loaded.publisher is not None
        assert len(loaded.publisher.mirrors) == 2
    if example == "hub.toml":
        assert loaded.publisher is not None
        assert loaded.receiver is not None
        assert loaded.publisher.root == loaded.receiver.target
    result = run("check-config", "-c", config)
    assert result.returncode == 0, result.stderr
    if example == "subscriber.toml":
        assert (
            "  subscribe      https://upstream.example.org/mirrorhook/v1/events?repo=ius (events)"
            in result.stdout
        )
    if example == "publisher.toml":
        assert loaded.publishers is not None
        assert loaded.publishers.public_url == "https://upstream.example.org/mirrorhook"
        assert all(
            mirror.check_url and mirror.urls for mirror in loaded.publishers.repos[0].mirrors
        )
        assert "  page           https://upstream.example.org/mirrorhook/\n" in result.stdout
        assert "  mirror list    https://upstream.example.org/mirrorhook/mirrorlist\n" in (
            result.stdout
        )


# --- the daemon ---------------------------------------------------------------------------


def test_sync_while_serve_syncs_exits_75(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """docs/design.md#the-sync-lock: a one-shot sync finds the daemon's lock, exits 75 and
    starts no rsync."""
    serve_log = tmp_path / "serve-rsync.log"
    config = receiver_toml(
        tmp_path, upstream=daemon.url, rsync=str(counting_rsync(tmp_path, serve_log, delay=5))
    )
    start_serve(serve, config, tmp_path / "serve.log")
    wait_until(lambda: tree_invocations(serve_log), what="the daemon's transfer")
    # The one-shot sync gets its own counting wrapper (same tree, same lock) so that any
    # rsync it started would show in its own log.
    cli_log = tmp_path / "cli-rsync.log"
    (tmp_path / "cli").mkdir()
    cli_wrapper = counting_rsync(tmp_path / "cli", cli_log)
    cli_config = tmp_path / "cli.toml"
    cli_config.write_text(
        config.read_text().replace(str(tmp_path / "counting-rsync"), str(cli_wrapper))
    )
    result = run("sync", "-c", cli_config, "--force")
    assert result.returncode == 75, result.stderr
    assert "lock" in result.stderr
    assert not cli_log.exists()


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.slow
def test_sigterm_during_a_sync_exits_0_and_stops_rsync(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """docs/design.md#shutdown: SIGTERM mid-sync → exit 0, no rsync left running, marker
    unchanged."""
    first = receiver_toml(tmp_path, upstream=daemon.url)
    assert run("sync", "-c", first).returncode == 0
    publish(daemon.root, "2", {f"big/{i}.bin": "z" * 300_000 for i in range(8)})
    pids = tmp_path / "rsync.pids"
    wrapper = slow_rsync(tmp_path, pids, bwlimit=300)
    config = receiver_toml(tmp_path, upstream=daemon.url, rsync=str(wrapper))
    process = start_serve(serve, config, tmp_path / "serve.log")
    wait_until(lambda: any((tmp_path / "mirror").rglob(".~tmp~")), what="a transfer in progress")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, (tmp_path / "serve.log").read_text()
    for pid in map(int, pids.read_text().split()):
        assert _process_group_members(pid) == [], "an rsync outlived the daemon"
    assert local_marker(tmp_path) == "1"
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_startup_check_catches_up_without_a_webhook(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """docs/design.md#startup-check-and-polling: a receiver started while stale syncs without
    any webhook or poll."""
    config = receiver_toml(tmp_path, upstream=daemon.url, poll_interval=0)
    process = start_serve(serve, config, tmp_path / "serve.log")
    wait_until(lambda: local_marker(tmp_path) == "1", what="the startup sync")
    assert trees_equal(daemon.root, tmp_path / "mirror")
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


@pytest.mark.slow
def test_poll_syncs_a_publish_whose_webhook_was_lost(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """No webhook at all: the poll notices the new upstream marker and syncs it."""
    config = receiver_toml(tmp_path, upstream=daemon.url, poll_interval=0.5, poll_jitter=0)
    start_serve(serve, config, tmp_path / "serve.log")
    wait_until(lambda: local_marker(tmp_path) == "1", what="the startup sync")
    publish(daemon.root, "2", {"dir0/polled.rpm": "found by the poll\n"})
    wait_until(lambda: local_marker(tmp_path) == "2", what="the poll's sync")
    assert trees_equal(daemon.root, tmp_path / "mirror")
    assert "trigger (poll)" in (tmp_path / "serve.log").read_text()


def test_serve_with_a_busy_port_exits_1(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """A listen address already in use is a one-line fatal error, exit 1."""
    config = receiver_toml(tmp_path, upstream=daemon.url, listen=[f"127.0.0.1:{daemon.port}"])
    result = run("serve", "-c", config, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{daemon.port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_notify_prints_one_line_per_mirror_and_exits_by_the_worst(tmp_path: Path) -> None:
    """notify: exit 0 when every mirror accepted, 1 when one failed (the rest delivered)."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, "20261125")
    up, down = free_port(), free_port()
    config = publisher_toml(
        tmp_path,
        root=root,
        mirrors=[("up", f"http://127.0.0.1:{up}/v1/hook"), ("down", f"http://127.0.0.1:{down}/")],
    )
    mirror = HookMirror(mirror_secret(tmp_path, "up"), always(202))
    with mirror_in_thread(mirror, up):
        result = run("notify", "-c", config)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "marker '20261125'"
    assert lines[1].split()[:4] == ["MIRROR", "RESULT", "HTTP", "MS"]
    assert lines[2].split()[:3] == ["up", "delivered", "202"]
    assert lines[3].split()[:3] == ["down", "failed", "-"]
    assert "cannot connect" in lines[3]
    assert mirror.values() == ["20261125"]
    (tmp_path / "single").mkdir()
    single = publisher_toml(
        tmp_path / "single", root=root, mirrors=[("up", f"http://127.0.0.1:{up}/v1/hook")]
    )
    (tmp_path / "single" / "secrets" / "up.secret").write_text(
        (tmp_path / "secrets" / "up.secret").read_text()
    )
    with mirror_in_thread(HookMirror(mirror_secret(tmp_path, "up"), always(200)), up):
        assert run("notify", "-c", single).returncode == 0


def test_notify_without_a_marker_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    config = publisher_toml(
        tmp_path, root=tmp_path / "repo", mirrors=[("m", "http://127.0.0.1:9/v1/hook")]
    )
    result = run("notify", "-c", config)
    assert result.returncode == 1
    assert "no marker to announce" in result.stderr
    assert "Traceback" not in result.stderr


def test_notify_with_a_symlinked_marker_fails_in_one_line_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """CURRENT a symlink to a mirror's secret file: notify exits 1 with one error line that
    names the marker and the problem; no mirror gets a webhook; the secret is not printed."""
    root = tmp_path / "repo"
    root.mkdir()
    port = free_port()
    config = publisher_toml(
        tmp_path, root=root, mirrors=[("m", f"http://127.0.0.1:{port}/v1/hook")]
    )
    secret_file = tmp_path / "secrets" / "m.secret"
    (root / "CURRENT").symlink_to(secret_file)
    mirror = HookMirror(mirror_secret(tmp_path, "m"), always(202))
    with mirror_in_thread(mirror, port):
        result = run("notify", "-c", config)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    current = root / "CURRENT"
    assert line.endswith(
        f"mirrorhook: refusing marker {current}: it is a symbolic link (not followed)"
    )
    secret = secret_file.read_text().strip()
    assert secret.removeprefix("whsec_") not in result.stderr
    assert mirror.received == []


@pytest.mark.slow
def test_status_shows_what_the_running_daemon_does(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """`status` (another process) shows the daemon's pid and next poll while it runs, and
    no daemon once it stopped."""
    config = receiver_toml(tmp_path, upstream=daemon.url, poll_interval=600)
    process = start_serve(serve, config, tmp_path / "serve.log")
    wait_until(lambda: local_marker(tmp_path) == "1", what="the startup sync")

    def receiver() -> dict[str, object]:
        document: dict[str, object] = json.loads(run("status", "-c", config, "--json").stdout)[
            "receiver"
        ]
        return document

    wait_until(lambda: receiver()["next_poll"] is not None, what="the next poll noted")
    live = receiver()
    assert live["daemon_pid"] == process.pid
    assert live["state"] == "idle"
    human = run("status", "-c", config).stdout
    assert "next poll" in human
    port = port_of(config)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'mirrorhook_marker_info{marker="1",side="local"} 1.0' in metrics
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    stopped = receiver()
    assert stopped["daemon_pid"] is None
    assert stopped["next_poll"] is None


def test_one_shot_commands_do_not_import_aiohttp() -> None:
    """`sync` runs from cron every hour: it must not pay aiohttp's quarter-second import."""
    probe = "import sys, mirrorhook.cli; print('aiohttp' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_publisher_status_rows_and_exit_status(tmp_path: Path) -> None:
    """status for a publisher: one row per mirror, --json alike, exit 1 while one fails."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, "7")
    up, down = free_port(), free_port()
    config = publisher_toml(
        tmp_path,
        root=root,
        mirrors=[("up", f"http://127.0.0.1:{up}/v1/hook"), ("down", f"http://127.0.0.1:{down}/")],
    )
    before = run("status", "-c", config)
    assert before.returncode == 0
    assert "never tried" in before.stdout
    with mirror_in_thread(HookMirror(mirror_secret(tmp_path, "up"), always(202)), up):
        assert run("notify", "-c", config).returncode == 1
    human = run("status", "-c", config)
    assert human.returncode == 1
    rows = {line.split()[0]: line.split() for line in human.stdout.splitlines()[3:]}
    assert rows["up"][1:2] == ["7"]
    assert "delivered" in rows["up"]
    assert "failed" in rows["down"]
    machine = run("status", "-c", config, "--json")
    assert machine.returncode == 1
    document = json.loads(machine.stdout)["publisher"]
    assert document["current_marker"] == "7"
    by_name = {mirror["name"]: mirror for mirror in document["mirrors"]}
    assert by_name["up"]["delivered"] == "7"
    assert by_name["down"]["result"] == "failed"
    assert "cannot connect" in by_name["down"]["last_error"]


def test_publish_hook_rewrites_the_marker_atomically_and_notifies(tmp_path: Path) -> None:
    """contrib/publish-hook.sh: a new marker in place (no temporary left) and notify run."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, "old")
    port = free_port()
    config = publisher_toml(
        tmp_path, root=root, mirrors=[("m", f"http://127.0.0.1:{port}/v1/hook")]
    )
    mirror = HookMirror(mirror_secret(tmp_path, "m"), always(202))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with mirror_in_thread(mirror, port):
        result = subprocess.run(
            ["sh", str(REPO / "contrib" / "publish-hook.sh"), str(root), str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    marker = (root / "CURRENT").read_text().strip()
    assert marker != "old"
    assert mirror.values() == [marker]
    assert sorted(path.name for path in root.iterdir()) == ["CURRENT"]


def test_publisher_only_host_serves_status_and_metrics_on_its_listen(
    tmp_path: Path, serve: list[subprocess.Popen[str]]
) -> None:
    """[publisher] listen: /healthz, /v1/status and /metrics without a receiver."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, "5")
    port, mirror_port = free_port(), free_port()
    config = publisher_toml(
        tmp_path,
        root=root,
        mirrors=[("m", f"http://127.0.0.1:{mirror_port}/v1/hook")],
        listen=[f"127.0.0.1:{port}"],
    )
    with mirror_in_thread(HookMirror(mirror_secret(tmp_path, "m"), always(202)), mirror_port):
        with (tmp_path / "serve.log").open("w") as log:
            serve.append(
                subprocess.Popen([*MIRRORHOOK, "serve", "-c", str(config)], stderr=log, text=True)
            )
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: (
                'result="delivered"' in urllib.request.urlopen(f"{base}/metrics").read().decode()
            ),
            what="the delivery counted",
        )
        status = json.loads(urllib.request.urlopen(f"{base}/v1/status").read())
        assert status["publisher"]["current_marker"] == "5"
        assert urllib.request.urlopen(f"{base}/healthz").status == 200


def _demo_folders() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).glob("mirrorhook-demo-*")}


@pytest.mark.slow
def test_demo_converges_prints_its_timeline_and_cleans_up() -> None:
    """`mirrorhook demo`: three publishes, a timeline per mirror, every tree identical,
    exit 0, and no folder or process left behind."""
    before = _demo_folders()
    process = subprocess.Popen(
        [*MIRRORHOOK, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    lines = []
    page = None
    for line in process.stdout:  # the demo runs meanwhile: its page is there to be read
        lines.append(line.rstrip("\n"))
        if line.startswith("the upstream's page, while the demo runs: "):
            with urllib.request.urlopen(line.split()[-1], timeout=10) as answer:
                page = answer.read().decode()
    _rest, err = process.communicate(timeout=180)
    assert process.returncode == 0, "\n".join(lines) + err
    assert page is not None
    assert "epel" in page
    assert "ius" in page
    assert any("milliseconds after the publish" in line for line in lines)
    assert lines[-1] == "every mirror converged"
    timeline = [line for line in lines if "tree identical" in line]
    assert len(timeline) == 12  # 3 publishes x (mirror-a: ius, epel; mirror-b, mirror-c: ius)
    assert all("announced" in line and "sync finished" in line for line in timeline)
    assert sum(line.lstrip().startswith("mirror-c ") for line in timeline) == 3  # no port
    assert not any(" ? " in line for line in timeline), "an event missing from the timeline"
    assert _demo_folders() == before


@pytest.mark.slow
def test_demo_interrupted_cleans_up() -> None:
    """Ctrl-C (SIGINT) during the demo stops every process and removes the folder."""
    before = _demo_folders()
    process = subprocess.Popen(
        [*MIRRORHOOK, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("demo folder: ")
    folder = Path(first.split()[2])
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    out, _err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "cleaning up" in out
    assert not folder.exists()
    assert _demo_folders() == before
    leftovers = subprocess.run(
        ["pgrep", "-f", str(folder)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


def test_restarted_daemon_reports_the_last_success_from_before(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """The last-success gauge survives a restart (an age alert must not fire on restart)."""
    config = receiver_toml(tmp_path, upstream=daemon.url, backoff=3600)
    assert run("sync", "-c", config).returncode == 0
    start_serve(serve, config, tmp_path / "serve.log")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port_of(config)}/metrics").read().decode()
    gauge = next(
        line for line in text.splitlines() if line.startswith("mirrorhook_last_success_timestamp")
    )
    assert time.time() - 120 < float(gauge.split()[1]) <= time.time()


@pytest.mark.slow
def test_unix_socket_listener_is_group_writable_only(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """A unix socket listener is mode 0660: nginx's user, in mirrorhook's group, can
    connect (connecting needs write permission); others cannot."""
    sock = tmp_path / "hook.sock"
    config = receiver_toml(tmp_path, upstream=daemon.url, listen=[f"unix:{sock}"])
    with (tmp_path / "serve.log").open("w") as log:
        serve.append(
            subprocess.Popen([*MIRRORHOOK, "serve", "-c", str(config)], stderr=log, text=True)
        )
    wait_until(lambda: "listening on unix:" in (tmp_path / "serve.log").read_text())
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660


def test_one_shot_sync_imports_only_what_a_sync_uses() -> None:
    """The cron sync records no metrics, serves nothing, shows no status and keeps no
    freshness: prometheus_client, aiohttp and the publisher's and status code are the other
    commands' cost (a sync by change imports aiohttp when it fetches one), the snapshot
    code that of the syncs of snapshot trees, the publisher's config that of a config with
    a publisher, and email.utils and difflib were only ever used for a date and a typo."""
    unused = (
        "prometheus_client",
        "aiohttp",
        "mirrorhook.status",
        "mirrorhook.freshness",
        "mirrorhook.history",
        "mirrorhook.describe",
        "mirrorhook.snapshot_steps",
        "mirrorhook.snapshots",
        "mirrorhook.snapshot_record",
        "mirrorhook.left_out",
        "mirrorhook.btrfs",
        "mirrorhook.publisher_config",
        "email.utils",
        "difflib",
    )
    probe = (
        "import sys, mirrorhook.cli, mirrorhook.syncer, mirrorhook.oneshot; "
        f"print([name for name in {unused!r} if name in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_daemon_killed_mid_sync_its_orphaned_rsync_keeps_the_tree_locked(
    tmp_path: Path, daemon: RsyncDaemon, serve: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL of `serve` during a transfer: rsync (its own process group) lives on, and
    holds the sync lock until it ends, so no second rsync writes the tree meanwhile; the
    marker is never ahead of the content; the next sync converges with no .~tmp~ left."""
    config = receiver_toml(tmp_path, upstream=daemon.url)
    assert run("sync", "-c", config).returncode == 0
    publish(daemon.root, "2", {f"big/{i}.bin": "z" * 200_000 for i in range(6)})
    pids = tmp_path / "rsync.pids"
    wrapper = slow_rsync(tmp_path, pids, bwlimit=400)
    slow = receiver_toml(tmp_path, upstream=daemon.url, rsync=str(wrapper))
    process = start_serve(serve, slow, tmp_path / "serve.log")
    wait_until(lambda: any((tmp_path / "mirror").rglob(".~tmp~")), what="a transfer in progress")
    process.kill()
    process.wait(10)
    orphan = int(pids.read_text().split()[-1])
    assert _process_group_members(orphan), "rsync should outlive the killed daemon"
    assert local_marker(tmp_path) == "1"
    locked = run("sync", "-c", config)
    assert locked.returncode == 75, locked.stderr
    wait_until(lambda: not _process_group_members(orphan), timeout=60, what="the orphan's end")
    assert local_marker(tmp_path) == "1", "the orphan must not install the marker"
    assert run("sync", "-c", config, "--if-changed").returncode == 0
    assert local_marker(tmp_path) == "2"
    assert not any((tmp_path / "mirror").rglob(".~tmp~"))
    assert trees_equal(daemon.root, tmp_path / "mirror")


def test_check_config_shows_where_mirrors_subscribe_and_refuses_a_broker_without_the_key(
    tmp_path: Path,
) -> None:
    """With signing_key_file the event stream's URL; with [publisher.mqtt] each
    repository's topic; without the key, [publisher.mqtt] is a problem named in one line."""
    private, _public = key_pair(tmp_path / "keys", "upstream")
    (tmp_path / "ius").mkdir()
    head = (
        f'[publisher]\nstate_dir = "{tmp_path}/state"\nname = "up.example.org"\n'
        'listen = ["127.0.0.1:8874"]\npublic_url = "https://up.example.org/mirrorhook"\n'
    )
    tail = f'[publisher.repos.ius]\nroot = "{tmp_path}/ius"\n'
    mqtt = '[publisher.mqtt]\nurl = "mqtts://broker.example.org"\npoke_topic = "rsync/up/{repo}"\n'
    config = tmp_path / "publisher.toml"
    config.write_text(head + f'signing_key_file = "{private}"\n' + mqtt + tail)
    result = run("check-config", "-c", config)
    assert result.returncode == 0, result.stderr
    assert "https://up.example.org/mirrorhook/v1/events?repo=NAME" in result.stdout
    assert (
        "mirrorhook/up.example.org/ius on mqtts://broker.example.org (retained, QoS 1)"
        in result.stdout
    )
    config.write_text(head + mqtt + tail)
    refused = run("check-config", "-c", config)
    assert refused.returncode == 2
    assert f"{config}: publisher.mqtt: needs signing_key_file" in refused.stderr
