"""exec_on_success / exec_on_failure: real programs, their environment, deadline and record."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from mirrorhook import hooks
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_state import receiver_state_path
from tests.helpers import receiver_config


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
