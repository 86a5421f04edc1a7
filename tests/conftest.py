"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import Processes, RsyncDaemon, make_upstream, rsync_daemon, stop_processes

# Property tests check behaviour, not speed: no per-example deadline, so a loaded CI
# machine cannot turn a slow example into a failure.
settings.register_profile("mirrorhook", deadline=None)
settings.load_profile("mirrorhook")


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """An upstream tree with 20 files and marker ``1``."""
    return make_upstream(tmp_path / "upstream")


@pytest.fixture
def daemon(tmp_path: Path, upstream: Path) -> Iterator[RsyncDaemon]:
    """A real rsync daemon on 127.0.0.1 serving the upstream tree as ``rsync://.../up/``."""
    with rsync_daemon(tmp_path, upstream) as running:
        yield running


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start ``mirrorhook serve`` processes; every one is stopped at the end of the test."""
    running = Processes(tmp_path)
    yield running
    stop_processes(running.running)
