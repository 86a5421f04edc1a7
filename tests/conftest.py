"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RsyncDaemon, make_upstream, rsync_daemon


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """An upstream tree with 20 files and marker ``1``."""
    return make_upstream(tmp_path / "upstream")


@pytest.fixture
def daemon(tmp_path: Path, upstream: Path) -> Iterator[RsyncDaemon]:
    """A real rsync daemon on 127.0.0.1 serving the upstream tree as ``rsync://.../up/``."""
    with rsync_daemon(tmp_path, upstream) as running:
        yield running
