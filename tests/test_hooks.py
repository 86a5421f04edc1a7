"""exec_on_success / exec_on_failure: real programs, their environment, deadline and record."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from mirrorhook import hooks, oneshot
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_state import receiver_state_path
from tests.helpers import RsyncDaemon, receiver_config

# A hook that copies the environment it was started with (as execve gave it: a Python
# child's own locale coercion does not show there) to the file it is given.
ENV_COPY = "import shutil, sys; shutil.copyfile('/proc/self/environ', sys.argv[1])"


def tree(
    tmp_path: Path,
    exec_on_success: tuple[str, ...] = (),
    exec_on_failure: tuple[str, ...] = (),
) -> ReceiverConfig:
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(
        config, exec_on_success=exec_on_success, exec_on_failure=exec_on_failure
    )


def environment_in(path: Path) -> dict[str, str]:
    entries = path.read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if entry)


def recorded(config: ReceiverConfig) -> dict[str, object]:
    hook: dict[str, object] = json.loads(receiver_state_path(config).read_text())["last_hook"]
    return hook


async def test_a_hook_that_runs_too_long_is_stopped_with_its_children(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline stops the hook's whole process group (a child it started, too)."""
    pids = tmp_path / "child.pid"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pids}\nwait\n")
    script.chmod(0o755)
    config = tree(tmp_path, exec_on_success=(str(script),))
    await hooks.after_sync(config, "synced", "7", 1_800_000_000.0, timeout=0.5)
    assert recorded(config)["outcome"] == "stopped after 0.5 s"
    assert "was stopped after running for 0.5 s" in caplog.text
    child = int(pids.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()


async def test_a_hook_that_cannot_start_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    config = tree(tmp_path, exec_on_failure=(str(tmp_path / "gone"), "x"))
    await hooks.after_sync(config, "failed", None, 1_800_000_000.0)
    assert str(recorded(config)["outcome"]).startswith("could not start: cannot run")
    assert "No such file" in caplog.text


async def test_no_hook_for_an_up_to_date_mirror(tmp_path: Path) -> None:
    """Nothing was installed: exec_on_success is for new content only."""
    marker = tmp_path / "ran"
    config = tree(tmp_path, exec_on_success=("/usr/bin/touch", str(marker)))
    await hooks.after_sync(config, "up-to-date", "7", 1_800_000_000.0)
    assert not marker.exists()
    await hooks.after_sync(config, "synced", "7", 1_800_000_000.0)
    assert marker.exists()
    assert recorded(config)["outcome"] == "ok"


async def test_a_hook_sees_only_its_documented_environment_and_the_installed_value(
    tmp_path: Path, daemon: RsyncDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real sync (as `mirrorhook sync` runs it) from an upstream whose marker file holds
    `  v7 ` and a newline, in a daemon whose environment has RSYNC_PASSWORD and a canary:
    the hook gets exactly PATH, the daemon's HOME, LANG and TZ, and the three MIRRORHOOK_*
    variables; MIRRORHOOK_MARKER is `v7`, the value the marker rules read, not the text."""
    monkeypatch.setenv("RSYNC_PASSWORD", "the-upstreams-password")
    monkeypatch.setenv("MIRRORHOOK_CANARY", "leaked")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    monkeypatch.delenv("LC_ALL", raising=False)
    (daemon.root / "CURRENT").write_bytes(b"  v7 \n")
    seen = tmp_path / "environ"
    config = receiver_config(
        tmp_path,
        upstream=daemon.url,
        exec_on_success=[sys.executable, "-c", ENV_COPY, str(seen)],
    ).receiver
    assert config is not None
    await oneshot.sync_tree(config, if_changed=True, randomize=0)
    assert recorded(config)["outcome"] == "ok"
    assert environment_in(seen) == {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "TZ": "Europe/Berlin",
        "MIRRORHOOK_REPO": "",
        "MIRRORHOOK_MARKER": "v7",
        "MIRRORHOOK_RESULT": "synced",
    }


async def test_a_hook_of_a_daemon_without_path_gets_the_default_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PATH in the daemon's environment (nor HOME, LANG, LC_ALL, TZ): the hook still
    finds the usual programs; MIRRORHOOK_MARKER is empty after a failure."""
    for name in ("PATH", *hooks.PASSED_ON):
        monkeypatch.delenv(name, raising=False)
    seen = tmp_path / "environ"
    config = tree(tmp_path, exec_on_failure=(sys.executable, "-c", ENV_COPY, str(seen)))
    config = dataclasses.replace(config, name="epel")
    await hooks.after_sync(config, "failed", None, 1_800_000_000.0)
    assert environment_in(seen) == {
        "PATH": hooks.DEFAULT_PATH,
        "MIRRORHOOK_REPO": "epel",
        "MIRRORHOOK_MARKER": "",
        "MIRRORHOOK_RESULT": "failed",
    }
