"""State files: atomic replacement, and locked read-modify-write across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mirrorhook.state import read_json, update_json, write_atomic

WRITER = """
import sys
from pathlib import Path
from mirrorhook.state import update_json
path, name = Path(sys.argv[1]), sys.argv[2]
for index in range(25):
    update_json(path, lambda doc: doc.setdefault("mirrors", {}).update({f"{name}-{index}": index}))
"""


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    """Eight processes (as serve and notify on one host) each add 25 entries to one file at
    the same time: all 200 are there afterwards."""
    path = tmp_path / "publisher.json"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}"]) for n in range(8)
    ]
    assert [writer.wait(60) for writer in writers] == [0] * 8
    assert len(json.loads(path.read_text())["mirrors"]) == 200


def test_write_atomic_leaves_old_content_when_interrupted(tmp_path: Path) -> None:
    """A failure while writing leaves the previous file whole and no temporary behind."""
    path = tmp_path / "state.json"
    write_atomic(path, b'{"old": true}')

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        update_json(path, lambda doc: doc.update(bad=Unserialisable()))
    assert read_json(path) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


def test_read_json_tolerates_missing_and_damaged_files(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") == {}
    (tmp_path / "damaged.json").write_text("{not json")
    assert read_json(tmp_path / "damaged.json") == {}
    (tmp_path / "list.json").write_text("[1]")
    assert read_json(tmp_path / "list.json") == {}
