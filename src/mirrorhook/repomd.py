"""The upstream's ``repodata/repomd.xml`` files as the Metalink vouches for them.

dnf verifies the ``repomd.xml`` it fetches from a mirror against the hashes a Metalink
gives, so a mirror whose metadata is tampered or old is never used. This module knows, per
repository path (``el9/x86_64``), the ``repomd.xml`` the upstream serves now — its size,
mtime and digests, computed once per version of the file (a version is its inode, size and
mtime) — and the versions it replaced within the last ``window`` seconds: the alternates,
so that a mirror still fetching the previous publish is not a hard failure (MirrorManager's
``<mm0:alternates>``). Versions live in ``repomd.json`` beside the freshness record, so a
restart keeps the alternates (docs/design.md#metalink).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mirrorhook.state import read_json, write_json

logger = logging.getLogger(__name__)

REPOMD = "repodata/repomd.xml"
STATE_NAME = "repomd.json"
MAX_REPOMD = 1 << 20
"""Bytes a ``repomd.xml`` may take (Fedora's are about 10 KB): a larger one is refused."""
MAX_PATHS = 256
"""Repository paths remembered per tree: requests name them, so their number is bounded."""
MAX_ALTERNATES = 4
"""Replaced versions kept per path (within ``window``)."""


class RepomdError(Exception):
    """No ``repomd.xml`` can be vouched for at that path: why, in a few words."""


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a ``repomd.xml``: what a Metalink says of it."""

    size: int
    mtime: int
    sha256: str
    sha512: str
    identity: tuple[int, int, int, int] = (0, 0, 0, 0)
    """(device, inode, size, mtime in ns): the digests are reused while it is unchanged."""
    replaced_at: float | None = None
    """When a newer version was first seen; ``None`` for the current one."""


def repo_path(text: str) -> str:
    """A repository path inside the tree (``el9/x86_64``, as dnf expands
    ``$releasever/$basearch``): relative, plain names, no ``..``; ``""`` for the tree root.
    ``ValueError`` says what is wrong."""
    if len(text) > 256:
        raise ValueError("path is longer than 256 characters")
    parts = [part for part in text.strip("/").split("/") if part]
    if text.startswith("/"):
        raise ValueError("path must be relative to the repository's root")
    for part in parts:
        if part in (".", "..") or not all(
            c.isascii() and (c.isalnum() or c in "._-+~") for c in part
        ):
            raise ValueError(
                f"path must be plain names (letters, digits, '.', '_', '-', '+', '~'): {text!r}"
            )
    return "/".join(parts)


class RepomdVersions:
    """The ``repomd.xml`` versions of one tree's paths: the current one and the alternates."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        *,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.path = state_dir / STATE_NAME
        self.window = window
        self._clock = clock
        self._versions: dict[str, list[Version]] = _load(self.path)
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    def known(self) -> list[str]:
        """The paths asked for so far (the ones re-read after a publish)."""
        return list(self._versions)

    async def versions(self, path: str) -> tuple[Version, list[Version]]:
        """The current version of ``path``'s ``repomd.xml`` and its alternates (newest first);
        ``RepomdError`` when there is none to vouch for. Hashing runs off the event loop."""
        async with self._lock:  # one hashing of a new version, however many ask at once
            current = await asyncio.to_thread(self._read, path)
            history = self._versions.get(path, [])
            if history and history[0].identity == current.identity:
                current = history[0]
            elif not history and len(self._versions) >= MAX_PATHS:
                pass  # answered, not remembered: requests cannot grow the record
            else:
                await self._replace(path, current, history)
            cutoff = self._clock() - self.window
            alternates = [
                old
                for old in self._versions.get(path, [])[1:]
                if old.replaced_at is not None
                and old.replaced_at >= cutoff
                and old.sha256 != current.sha256
            ]
            return current, alternates

    def published(self) -> None:
        """A marker was announced: re-read every known path now, in the background (one
        refresh at a time), so that a replaced version's window counts from the publish,
        not from the next request."""
        if self._versions and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        """Re-read every known path."""
        for path in self.known():
            with contextlib.suppress(RepomdError):
                await self.versions(path)

    async def close(self) -> None:
        """End a refresh still running (the tree stops)."""
        if self._refreshing is not None:
            self._refreshing.cancel("the tree stops")
            await asyncio.gather(self._refreshing, return_exceptions=True)

    async def _replace(self, path: str, current: Version, history: list[Version]) -> None:
        now = self._clock()
        older = [
            version if version.replaced_at is not None else replace(version, replaced_at=now)
            for version in history
        ]
        self._versions[path] = [current, *older[:MAX_ALTERNATES]]
        try:
            await asyncio.to_thread(write_json, self.path, _document(self._versions), compact=True)
        except OSError as err:  # the alternates are lost at a restart, no more
            logger.warning("cannot write %s: %s", self.path, err.strerror)

    def _read(self, path: str) -> Version:
        """Stat, and hash unless unchanged, ``root/path/repodata/repomd.xml``; never a file
        outside the tree, whatever symlinks it holds."""
        name = self.root / path / REPOMD if path else self.root / REPOMD
        try:
            real = name.resolve(strict=True)
            if not real.is_relative_to(self.root.resolve()):
                raise RepomdError(f"{REPOMD} at {path or '/'} leads outside the tree")
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (OSError, RuntimeError):
            raise RepomdError(f"no {REPOMD} at {path or '/'}") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise RepomdError(f"{REPOMD} at {path or '/'} is not a regular file")
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            known = self._versions.get(path, [])
            if known and known[0].identity == identity:
                return known[0]
            data = file.read(MAX_REPOMD + 1)
        if len(data) > MAX_REPOMD:
            raise RepomdError(f"{REPOMD} at {path or '/'} is larger than {MAX_REPOMD} bytes")
        return Version(
            size=len(data),
            mtime=int(info.st_mtime),
            sha256=hashlib.sha256(data).hexdigest(),
            sha512=hashlib.sha512(data).hexdigest(),
            identity=identity,
        )


def _document(versions: dict[str, list[Version]]) -> dict[str, Any]:
    return {
        "paths": {path: [asdict(version) for version in kept] for path, kept in versions.items()}
    }


def _load(path: Path) -> dict[str, list[Version]]:
    """The recorded versions; an entry that does not read back is left out (the next request
    hashes the file anew)."""
    paths = read_json(path).get("paths")
    if not isinstance(paths, dict):
        return {}
    loaded: dict[str, list[Version]] = {}
    for name, kept in list(paths.items())[:MAX_PATHS]:
        if not isinstance(name, str) or not isinstance(kept, list):
            continue
        versions = []
        for entry in kept[: MAX_ALTERNATES + 1]:
            try:
                versions.append(_version(entry))
            except (KeyError, TypeError, ValueError):
                continue
        if versions:
            loaded[name] = versions
    return loaded


def _version(entry: Any) -> Version:
    if not isinstance(entry, dict):
        raise TypeError("not a table")
    identity = tuple(int(n) for n in entry["identity"])
    if len(identity) != 4:
        raise ValueError("identity")
    replaced = entry.get("replaced_at")
    return Version(
        size=int(entry["size"]),
        mtime=int(entry["mtime"]),
        sha256=str(entry["sha256"]),
        sha512=str(entry["sha512"]),
        identity=(identity[0], identity[1], identity[2], identity[3]),
        replaced_at=float(replaced) if isinstance(replaced, int | float) else None,
    )
