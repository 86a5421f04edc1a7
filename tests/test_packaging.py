"""What the project ships: the sdist and the wheel that hatchling builds from this tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_and_wheel_ship_the_license(tmp_path: Path) -> None:
    """pyproject says MIT: the LICENSE text travels in both the sdist and the wheel (in the
    wheel's metadata folder, as the packaging metadata standard puts it)."""
    source = tmp_path / "source"
    # Built from a copy, so that the build can leave nothing in the work tree.
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "*_cache", ".hypothesis", "__pycache__"),
    )
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (sdist,) = out.glob("mirrorhook-*.tar.gz")
    (wheel,) = out.glob("mirrorhook-*.whl")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith("/LICENSE") and name.count("/") == 1 for name in names), names
    with zipfile.ZipFile(wheel) as archive:
        licence = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, archive.namelist()
        assert b"MIT License" in archive.read(licence[0])
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: MIT" in archive.read(metadata).decode()
