"""systemd integration: the shipped units verify, and READY/WATCHDOG reach a real socket."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorhook.sdnotify import Notifier
from tests.helpers import RsyncDaemon, receiver_toml

REPO = Path(__file__).resolve().parent.parent
UNITS = ["mirrorhook.service", "mirrorhook-sync.service", "mirrorhook-sync.timer"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_units_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the units (ExecStart pointed at this mirrorhook)."""
    mirrorhook = shutil.which("mirrorhook") or str(Path(sys.executable).parent / "mirrorhook")
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/mirrorhook", mirrorhook))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on many mistakes ("Failed to parse ..., ignoring"): any word is one.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.settimeout(15)
        yield listener


def receive_until(listener: socket.socket, field: str, timeout: float = 15) -> list[str]:
    """Collect datagrams until one holds ``field``; return every line seen. Bounded in time:
    watchdog pings keep arriving, so a field that never comes must still end the wait."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while field not in seen:
        assert time.monotonic() < deadline, f"no {field} within {timeout:g} s: {seen[-5:]}"
        seen += listener.recv(4096).decode().splitlines()
    return seen


def test_serve_sends_ready_watchdog_and_stopping(
    tmp_path: Path, daemon: RsyncDaemon, notify_socket: socket.socket
) -> None:
    """Under Type=notify, serve sends READY=1 once listening, WATCHDOG=1 pings from its
    event loop at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM."""
    config = receiver_toml(tmp_path, upstream=daemon.url)
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "200000",
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        lines = receive_until(notify_socket, "READY=1")
        assert any(line.startswith("STATUS=mirroring rsync://127.0.0.1") for line in lines)
        pings = 0
        while pings < 3:
            pings += receive_until(notify_socket, "WATCHDOG=1").count("WATCHDOG=1")
        # systemctl reload: RELOADING=1 with the monotonic clock, then READY=1 when done.
        process.send_signal(signal.SIGHUP)
        reloading = receive_until(notify_socket, "RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        applied = receive_until(notify_socket, "READY=1")
        assert any(line.startswith("STATUS=mirroring rsync://127.0.0.1") for line in applied)
        assert not any(line.startswith("STATUS=reload refused") for line in applied)
        config.write_text(config.read_text() + "unknown_key = 1\n")
        process.send_signal(signal.SIGHUP)
        receive_until(notify_socket, "RELOADING=1")
        refused = receive_until(notify_socket, "READY=1")
        assert "STATUS=reload refused, the running config stays (see the log)" in refused
        process.terminate()
        assert "STOPPING=1" in receive_until(notify_socket, "STOPPING=1")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_abstract_socket_addresses_and_no_socket() -> None:
    """'@name' means the abstract namespace; without $NOTIFY_SOCKET nothing is sent."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0mirrorhook-test-notify")
        listener.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@mirrorhook-test-notify"}).ready("up")
        assert listener.recv(4096).decode().splitlines() == ["READY=1", "STATUS=up"]
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("nobody listens")  # must not raise
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
        ).watchdog_interval
        is None
    )
