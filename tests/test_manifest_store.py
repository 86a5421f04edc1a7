"""The stored manifests of a tree (docs/design.md#the-manifest-store): by marker value,
the newest ``keep`` kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest
from mirrorhook.manifest_store import ManifestStore, file_name


def _manifest(marker: str, created: float) -> Manifest:
    entry = Entry(b"file", Kind.FILE, 1, 2, 0o644, 0, 0, 3)
    return Manifest(marker=marker, created=created, entries=(entry,))


def test_a_saved_manifest_loads_by_its_marker_value(tmp_path: Path) -> None:
    """Marker values are any text (slashes, dots, spaces, a kilobyte): files are named
    by their sha256, and the folder is made when needed."""
    store = ManifestStore(tmp_path / "state" / "manifests")
    for marker in ("20261202", "../../etc/passwd", "a b/ç", "x" * 1024):
        manifest = _manifest(marker, 100.0)
        path = store.save(manifest)
        assert path.parent == store.folder
        assert path.name == file_name(marker)
        assert len(path.name) == 64 + len(".mhmf")
        assert store.load(marker) == manifest
    assert store.load("never saved") is None
    assert not [name for name in (store.folder).iterdir() if name.name.startswith(".")]


def test_the_store_keeps_the_newest_manifests(tmp_path: Path) -> None:
    """Newest by creation time (the file's mtime is set to it), whatever the order of
    saving; the rest are removed as each manifest is saved."""
    store = ManifestStore(tmp_path, keep=3)
    for number, created in enumerate([50.0, 10.0, 40.0, 30.0, 20.0]):
        store.save(_manifest(str(number), created))
    assert [path.name for path in store.paths()] == [file_name(m) for m in ("0", "2", "3")]
    assert store.load("1") is None
    assert store.load("4") is None
    latest = store.latest()
    assert latest is not None
    assert latest.marker == "0"


def test_saving_a_marker_again_replaces_its_manifest(tmp_path: Path) -> None:
    """As when the digests of a manifest saved before they were done are in."""
    store = ManifestStore(tmp_path)
    store.save(_manifest("1", 10.0))
    done = _manifest("1", 10.0)
    done = Manifest("1", 10.0, (done.entries[0]._replace(sha256=b"\1" * 32),))
    store.save(done)
    assert store.load("1") == done
    assert len(store.paths()) == 1


def test_an_empty_store_has_no_latest(tmp_path: Path) -> None:
    assert ManifestStore(tmp_path / "none").latest() is None
    assert ManifestStore(tmp_path).paths() == []


def test_a_damaged_or_misplaced_file_is_an_error_naming_it(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    path = store.save(_manifest("1", 10.0))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ManifestError, match=f"manifest {path}: truncated"):
        store.load("1")
    store.save(_manifest("2", 10.0)).rename(store.path_of("3"))
    with pytest.raises(ManifestError, match="another marker value"):
        store.load("3")


def test_a_store_keeps_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ManifestStore(Path("/nonexistent"), keep=0)
