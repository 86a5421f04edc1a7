"""``mirrorhook verify``: the local tree against the publisher's manifest of its marker
(docs/design.md#verify).

The manifest comes signed from ``/v1/manifest/NAME?marker=LOCAL`` (the URL beside the
``changes_url`` the announcements gave) and is checked with the upstream's public key.
The tree is walked as the publisher walks its own, then compared entry by entry: kinds,
sizes, file mtimes, modes, symlink targets, hard links and, unless ``quick``, the sha256
of every file the manifest has one for (so a file rewritten with its size and mtime put
back is found). Left out, as the promise of a sync by change leaves them out: what
mirrorhook writes itself (the marker, trace and lastsync files), owners (a mirror that is
not root cannot keep them), and the mtimes of folders and symlinks (rsync's
``--delay-updates`` leaves those it wrote at the time of the transfer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from mirrorhook import marker, receiver_state
from mirrorhook.errors import ManifestError, MarkerError, MirrorhookError
from mirrorhook.escape import printable
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, walk
from mirrorhook.manifest_digest import digest
from mirrorhook.manifest_format import decode_manifest
from mirrorhook.message import CHANGES_PATH, MANIFEST_PATH
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.signed_fetch import FetchError, fetch_signed

MANIFEST_LIMIT = 1 << 30
"""Bytes a manifest may take on the wire (a 12M-file tree's is well below)."""


class VerifyError(MirrorhookError):
    """The tree could not be compared (no marker, no manifest to compare with...)."""


@dataclass(frozen=True, slots=True)
class Difference:
    path: bytes
    what: str

    def __str__(self) -> str:
        return f"{printable(self.path.decode('utf-8', 'backslashreplace'))}: {self.what}"


@dataclass(frozen=True, slots=True)
class Verified:
    """One tree's comparison."""

    marker: str
    entries: int
    """Entries of the manifest compared (mirrorhook's own files left out)."""
    contents: int
    """Files whose contents were compared (0 with ``quick``)."""
    differences: tuple[Difference, ...]
    settled: bool
    """Whether the publisher's walk met its tree at rest (if not, a difference may be its)."""


async def verify_tree(config: ReceiverConfig, *, quick: bool) -> Verified:
    """Compare ``config``'s tree with the publisher's manifest of its marker."""
    try:
        local = marker.read(config.target / config.marker)
    except MarkerError as err:
        raise VerifyError(f"cannot read the local marker: {err}") from None
    if local is None:
        raise VerifyError("the tree has no marker: it was never synced")
    expected = await _fetch_manifest(config, local)
    own = frozenset(path.encode() for path in config.own_files)
    actual = await asyncio.to_thread(walk, config.target, marker=local, exempt=own)
    upstream_paths = {entry.path for entry in expected.entries}
    own |= {folder for folder in _folders_of(own) if folder not in upstream_paths}
    if not quick:
        actual = (await asyncio.to_thread(digest, actual, config.target)).manifest
    differences = tuple(compare(expected, actual, ignore=own, contents=not quick))
    shown = [entry for entry in expected.entries if entry.path not in own]
    contents = 0 if quick else sum(1 for entry in shown if entry.sha256 is not None)
    return Verified(local, len(shown), contents, differences, expected.settled)


async def _fetch_manifest(config: ReceiverConfig, local: str) -> Manifest:
    if not config.public_keys:
        raise VerifyError("verify needs the upstream's public key (public_key_file)")
    changes_url = receiver_state.read(config).changes_url
    if changes_url is None or CHANGES_PATH not in changes_url:
        raise VerifyError(
            "no announcement has said where the publisher serves manifests yet (it needs "
            "signing_key_file and public_url)"
        )
    url = changes_url.replace(CHANGES_PATH, MANIFEST_PATH, 1)
    try:
        body = await fetch_signed(url, {"marker": local}, config.public_keys, limit=MANIFEST_LIMIT)
    except FetchError as err:
        raise VerifyError(f"the manifest of marker {local!r} from {url}: {err}") from None
    if body is None:
        raise VerifyError(f"the publisher keeps no manifest of marker {local!r} any more")
    try:
        manifest = await asyncio.to_thread(decode_manifest, body, url)
    except ManifestError as err:
        raise VerifyError(str(err)) from None
    if manifest.marker != local:
        raise VerifyError(f"the publisher sent the manifest of {manifest.marker!r}, not {local!r}")
    return manifest


def compare(
    expected: Manifest, actual: Manifest, *, ignore: frozenset[bytes], contents: bool
) -> Iterator[Difference]:
    """What differs between the two trees (both manifests are in tree order)."""
    want, have = _groups(expected), _groups(actual)
    left = [entry for entry in expected.entries if entry.path not in ignore]
    right = [entry for entry in actual.entries if entry.path not in ignore]
    i = j = 0
    while i < len(left) and j < len(right):
        old, new = left[i], right[j]
        if old.path == new.path:
            yield from _entry_differences(old, new, contents)
            if want.get(old.path) != have.get(new.path):
                yield Difference(old.path, "hard-linked with other paths than upstream")
            i += 1
            j += 1
        elif tree_key(old.path) < tree_key(new.path):
            yield _missing(old)
            i += 1
        else:
            yield _extra(new)
            j += 1
    yield from (_missing(entry) for entry in left[i:])
    yield from (_extra(entry) for entry in right[j:])


def _missing(entry: Entry) -> Difference:
    return Difference(entry.path, f"missing (a {entry.kind.value} upstream)")


def _extra(entry: Entry) -> Difference:
    return Difference(entry.path, f"not upstream (a {entry.kind.value} here)")


def _entry_differences(want: Entry, have: Entry, contents: bool) -> Iterator[Difference]:
    if want.kind is not have.kind:
        yield Difference(want.path, f"a {have.kind.value} here, a {want.kind.value} upstream")
        return
    if want.kind is not Kind.SYMLINK and want.mode != have.mode:
        yield Difference(want.path, f"mode {have.mode:04o} here, {want.mode:04o} upstream")
    if want.kind is Kind.SYMLINK and want.target != have.target:
        yield Difference(want.path, "the symlink points elsewhere")
    if want.kind is not Kind.FILE:
        return
    if want.size != have.size:
        yield Difference(want.path, f"{have.size} bytes here, {want.size} upstream")
    elif want.mtime_ns != have.mtime_ns:
        yield Difference(want.path, "another mtime")
    elif contents and want.sha256 is not None and want.sha256 != have.sha256:
        what = "other contents" if have.sha256 else "its contents could not be read"
        yield Difference(want.path, f"{what} (same size and mtime)")


def _folders_of(paths: frozenset[bytes]) -> set[bytes]:
    """The folders on the way to ``paths`` (a trace file's ``project/trace``)."""
    folders: set[bytes] = set()
    for path in paths:
        parts = path.split(b"/")[:-1]
        folders.update(b"/".join(parts[: index + 1]) for index in range(len(parts)))
    return folders


def _groups(manifest: Manifest) -> Mapping[bytes, frozenset[bytes]]:
    """Each hard-linked path's fellow members."""
    members: dict[int, set[bytes]] = {}
    for entry in manifest.entries:
        if entry.link_group:
            members.setdefault(entry.link_group, set()).add(entry.path)
    return {
        path: frozenset(group) for group in members.values() if len(group) > 1 for path in group
    }
