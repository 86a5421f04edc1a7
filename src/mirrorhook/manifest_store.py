"""The stored manifests of one tree, by marker value (docs/design.md#the-manifest-store).

A marker value is arbitrary text of up to ``marker.MAX_VALUE_BYTES``: a file is named by
its sha256 instead (``<hex>.mhmf``), which is short, safe in any file system and the same
for the same value. The file's mtime is the manifest's creation time, which orders the
files without opening them; the newest ``keep`` are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Manifest
from mirrorhook.manifest_format import decode_manifest, encode_manifest
from mirrorhook.state import write_atomic

SUFFIX = ".mhmf"
KEEP = 50
"""How many manifests a store keeps unless told otherwise (``keep_manifests``)."""


def file_name(marker: str) -> str:
    """The name of the file that holds the manifest of marker value ``marker``."""
    return hashlib.sha256(marker.encode("utf-8", "surrogateescape")).hexdigest() + SUFFIX


class ManifestStore:
    """The manifests of one tree in one folder (``state_dir/manifests``); the only code
    that reads or writes them."""

    def __init__(self, folder: Path, *, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError("a manifest store keeps at least one manifest")
        self.folder = folder
        self.keep = keep

    def path_of(self, marker: str) -> Path:
        """Where the manifest of ``marker`` is kept."""
        return self.folder / file_name(marker)

    def save(self, manifest: Manifest) -> Path:
        """Write ``manifest`` atomically (replacing one of the same marker value, as when its
        digests are done), then remove all but the newest ``keep``; return its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path_of(manifest.marker)
        write_atomic(path, encode_manifest(manifest), mtime=manifest.created)
        self.prune()
        return path

    def load(self, marker: str) -> Manifest | None:
        """The manifest of ``marker``, or ``None`` when none is kept; ``ManifestError``
        when its file is not a sound manifest of that value."""
        path = self.path_of(marker)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ManifestError(path, f"cannot read it: {err.strerror}") from None
        manifest = decode_manifest(data, str(path))
        if manifest.marker != marker:
            raise ManifestError(path, "it holds the manifest of another marker value")
        return manifest

    def latest(self) -> Manifest | None:
        """The newest manifest kept, or ``None``."""
        for path in self.paths():
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: the next
                return decode_manifest(path.read_bytes(), str(path))
        return None

    def paths(self) -> list[Path]:
        """The files of the kept manifests, newest first."""
        found: list[tuple[int, str, Path]] = []
        try:
            listing = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        for item in listing:
            if not item.name.endswith(SUFFIX) or item.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((item.stat(follow_symlinks=False).st_mtime_ns, item.name, Path(item)))
        found.sort(reverse=True)
        return [path for _mtime, _name, path in found]

    def prune(self) -> list[Path]:
        """Remove all but the newest ``keep`` manifests; return the files removed."""
        removed = self.paths()[self.keep :]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed
