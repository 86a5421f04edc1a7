"""The delta transfer with real rsync: a tree synced by changes equals one synced in full
(docs/design.md#the-delta-transfer)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mirrorhook import rsync
from mirrorhook.changes import Change, decode_change, diff
from mirrorhook.delta import (
    BATCH_LIMIT,
    batches,
    daemon_base,
    delta_rsync_args,
    transfer_units,
    write_list,
)
from mirrorhook.manifest import Kind, Manifest, walk
from mirrorhook.manifest_apply import manifest_from_change
from mirrorhook.manifest_digest import digest
from mirrorhook.receiver_config import ReceiverConfig
from tests.helpers import RsyncDaemon, receiver_config
from tests.trees import BASE_TIME, Tree, settle, snapshot

FILE, FOLDER, SYMLINK = Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ReceiverConfig:
    """A receiver's config: its ``tree_args`` are the full transfer's command."""
    folder = tmp_path_factory.mktemp("config")
    loaded = receiver_config(folder, upstream=str(folder / "upstream")).receiver
    assert loaded is not None
    return loaded


class Mirrors:
    """A source tree and two copies of it: one synced by changes, one in full."""

    def __init__(self, folder: Path, config: ReceiverConfig) -> None:
        self.folder = folder
        self.source = folder / "source"
        self.by_changes = folder / "by-changes"
        self.in_full = folder / "in-full"
        self.config = config
        self.runs = 0
        for tree in (self.source, self.by_changes, self.in_full):
            tree.mkdir()

    def args(self, target: Path) -> list[str]:
        """The full transfer's command (``rsync.tree_args``) from the source to ``target``."""
        replaced = dataclasses.replace(self.config, upstream=str(self.source), target=target)
        return rsync.tree_args(replaced)

    def full(self, target: Path) -> None:
        _run(self.args(target))

    def apply(self, change: Change, limit: int = BATCH_LIMIT) -> None:
        """Sync ``by_changes`` by ``change``, in runs of at most ``limit`` paths."""
        full = self.args(self.by_changes)
        cut = full.index("--")
        for number, batch in enumerate(batches(transfer_units(change), limit)):
            listing = self.folder / f"batch-{number}.list"
            write_list(listing, batch)
            _run([*full[:cut], *delta_rsync_args(listing), *full[cut:]])
            self.runs += 1

    def manifest(self, previous: Manifest | None, marker: str) -> Manifest:
        walked = walk(self.source, previous, marker=marker)
        return digest(walked, self.source).manifest


def _run(args: list[str]) -> None:
    ran = subprocess.run(args, capture_output=True, check=False)
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")


def _bytes(path: Path) -> bytes:
    return os.fsencode(path)


@settings(max_examples=30)
@given(data=st.data(), steps=st.integers(1, 5), limit=st.sampled_from([2, 5, BATCH_LIMIT]))
def test_a_tree_synced_by_changes_equals_one_synced_in_full(
    config: ReceiverConfig, data: st.DataObject, steps: int, limit: int
) -> None:
    """The promise of docs/design.md#manifests: after each publish of random operations
    (files added, removed, renamed and rewritten, kinds swapped, symlinks retargeted,
    modes and owners changed, hard links made and broken; awkward names), a copy synced
    by ``diff`` → the wire → ``transfer_units`` → batched rsync runs is identical to one
    synced by the full transfer: paths, kinds, contents, sizes, mtimes (folders too),
    modes, owners, symlink targets and hard links. The root folder alone may differ. And
    the manifest a hub makes of its copy from the change it applied equals a walk of it
    (docs/design.md#a-hub-passes-the-change-on)."""
    with tempfile.TemporaryDirectory() as folder:
        mirrors = Mirrors(Path(folder), config)
        tree = Tree(_bytes(mirrors.source), data)
        tree.seed()
        tree.change(data.draw(st.integers(0, 4), label="initial operations"))
        manifest = mirrors.manifest(None, "0")
        mirrors.full(mirrors.by_changes)
        mirrors.full(mirrors.in_full)
        hub = walk(mirrors.by_changes, marker="0")  # the copy by changes, as a hub's
        for step in range(1, steps + 1):
            tree.change(data.draw(st.integers(1, 6), label="operations"))
            new = mirrors.manifest(manifest, str(step))
            change = decode_change(diff(manifest, new).encode(), max_changes=10_000)
            mirrors.apply(change, limit)
            # A hub's manifest made from the change it applied is its tree's manifest.
            made = manifest_from_change(hub, change, mirrors.by_changes, created=0.0)
            walked = walk(mirrors.by_changes, hub, marker=str(step))
            assert _facts(made) == _facts(walked)
            hub = made
            event(f"changed {min(len(change.changed), 5)}, removed {min(len(change.removed), 5)}")
            if change.links:
                event("a hardlink group changed")
            mirrors.full(mirrors.in_full)
            by_changes = snapshot(_bytes(mirrors.by_changes))
            assert by_changes == snapshot(_bytes(mirrors.in_full))
            if not tree.unsafe:  # else rsync skipped a symlink: the copies hold less
                assert by_changes == snapshot(_bytes(mirrors.source))
            manifest = new


def _facts(manifest: Manifest) -> list[tuple[object, ...]]:
    """The entries without their digests (a walk reuses the previous manifest's; a
    manifest made from a change leaves the changed files to be hashed)."""
    return [entry[:10] for entry in manifest.entries]


def _change(changed: list[tuple[bytes, Kind]], removed: list[bytes], **links: object) -> Change:
    return Change("1", "2", tuple(changed), tuple(removed), **links)  # type: ignore[arg-type]


def test_a_removed_folder_is_listed_alone_and_nothing_below_a_new_file() -> None:
    """rsync deletes a listed missing folder whole; a path below one that is now a file
    cannot even be looked up on the sender (listed, it fails the run): the file replaces
    the folder, contents and all. A removed path in a folder that stays is listed."""
    change = _change(
        [(b"f", FILE), (b"keep", FOLDER), (b"s", SYMLINK), (b"x", FILE), (b"y", FILE)],
        [b"f/a", b"f/a/b", b"gone", b"gone/x", b"gone/y/z", b"keep/old", b"s/t"],
        links=((b"x", b"y"),),
    )
    assert transfer_units(change) == [
        (b"f",),
        (b"gone",),
        (b"keep",),
        (b"keep/old",),
        (b"s",),
        (b"x", b"y"),
    ]


def test_a_hardlink_group_is_one_unit_at_its_first_member() -> None:
    change = _change([(b"a", FILE), (b"b", FILE), (b"c", FILE)], [], links=((b"a", b"c"),))
    assert transfer_units(change) == [(b"a", b"c"), (b"b",)]


def test_batches_hold_at_most_the_limit_and_never_split_a_unit() -> None:
    units = [(b"a",), (b"b", b"c"), (b"d",), (b"e", b"f", b"g", b"h"), (b"i",)]
    assert batches(units, limit=3) == [[b"a", b"b", b"c"], [b"d"], [b"e", b"f", b"g", b"h"], [b"i"]]
    assert batches(units) == [[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i"]]
    assert batches([]) == []
    assert BATCH_LIMIT == 20_000


def test_the_list_is_nul_separated_and_every_path_starts_with_dot_slash(tmp_path: Path) -> None:
    """``--from0`` for names with newlines; ``./`` so that no entry starts with ``#`` or
    ``;``, which rsync takes for a comment in a local list file, even with --from0."""
    listing = tmp_path / "list"
    write_list(listing, [b"#hash", b"new\nline", b"a/b"])
    assert listing.read_bytes() == b"./#hash\0./new\nline\0./a/b\0"
    assert listing.stat().st_mode & 0o777 == 0o600
    assert delta_rsync_args(listing) == [
        f"--files-from={listing}",
        "--from0",
        "--delete-missing-args",
    ]


def test_names_rsync_would_take_for_comments_arrive(tmp_path: Path, config: ReceiverConfig) -> None:
    """A top-level ``#hash`` and ``;semi`` (a folder) added: both reach the copy."""
    mirrors = Mirrors(tmp_path, config)
    before = mirrors.manifest(None, "1")
    (mirrors.source / "#hash").write_bytes(b"1")
    (mirrors.source / ";semi").mkdir()
    (mirrors.source / ";semi" / "file").write_bytes(b"2")
    mirrors.apply(diff(before, mirrors.manifest(before, "2")))
    assert (mirrors.by_changes / "#hash").read_bytes() == b"1"
    assert (mirrors.by_changes / ";semi" / "file").read_bytes() == b"2"


def test_the_delta_keeps_the_full_transfers_max_delete(
    tmp_path: Path, config: ReceiverConfig
) -> None:
    """Deletions by --delete-missing-args count toward --max-delete: a change that removes
    more than the limit stops deleting there and fails with rsync's exit 25."""
    mirrors = Mirrors(tmp_path, dataclasses.replace(config, max_delete=2))
    for number in range(3):
        (mirrors.source / f"file{number}").write_bytes(b"x")
    before = mirrors.manifest(None, "1")
    mirrors.full(mirrors.by_changes)
    for number in range(3):
        (mirrors.source / f"file{number}").unlink()
    change = diff(before, mirrors.manifest(before, "2"))
    full = mirrors.args(mirrors.by_changes)
    listing = tmp_path / "list"
    write_list(listing, batches(transfer_units(change))[0])
    cut = full.index("--")
    ran = subprocess.run([*full[:cut], *delta_rsync_args(listing), *full[cut:]], check=False)
    assert ran.returncode == 25
    assert len(list(mirrors.by_changes.iterdir())) == 1


def test_a_change_applies_through_an_rsync_daemon_as_locally(
    tmp_path: Path, config: ReceiverConfig, daemon: RsyncDaemon
) -> None:
    """The receiver's case: the list is read locally and sent to a daemon's sender. Names
    that look like comments, a removed folder, a new folder and a mode change arrive as a
    full transfer from the same daemon has them (the marker stays the receiver's own)."""
    remote = dataclasses.replace(config, upstream=daemon.url)
    copies = {name: tmp_path / name for name in ("by-changes", "in-full")}

    def args(target: Path) -> list[str]:
        return rsync.tree_args(dataclasses.replace(remote, target=target))

    settle(_bytes(daemon.root), BASE_TIME + 10)  # see Tree.settle: times in the past
    for copy in copies.values():
        _run(args(copy))
    before = walk(daemon.root, marker="1")
    (daemon.root / "#hash").write_bytes(b"1")
    (daemon.root / ";semi").mkdir()
    (daemon.root / ";semi" / "x").write_bytes(b"2")
    shutil.rmtree(daemon.root / "dir1")
    (daemon.root / "dir2").chmod(0o700)
    settle(_bytes(daemon.root), BASE_TIME + 20)
    change = diff(before, walk(daemon.root, before, marker="2"))
    full = args(copies["by-changes"])
    cut = full.index("--")
    listing = tmp_path / "list"
    write_list(listing, batches(transfer_units(change))[0])
    _run([*full[:cut], *delta_rsync_args(listing), *full[cut:]])
    _run(args(copies["in-full"]))
    by_changes = snapshot(_bytes(copies["by-changes"]))
    assert by_changes == snapshot(_bytes(copies["in-full"]))
    assert b"#hash" in by_changes.entries
    assert b"dir1" not in by_changes.entries


@pytest.mark.parametrize(
    ("source", "named", "base"),
    [
        ("rsync://up.example.org/pub/ius/", "rsync://up.example.org/pub/", b"ius/"),
        ("rsync://up:8730/pub/a/b/", "rsync://up:8730/pub/", b"a/b/"),
        ("up.example.org::pub/ius/", "up.example.org::pub/", b"ius/"),
        ("rsync://up.example.org/pub/", "rsync://up.example.org/pub/", b""),
        ("mirror@up.example.org:/srv/ius/", "mirror@up.example.org:/srv/ius/", b""),
        ("/srv/ius/", "/srv/ius/", b""),
    ],
)
def test_a_daemon_source_below_a_module_is_named_by_its_root(
    source: str, named: str, base: bytes
) -> None:
    """rsync's daemon finds --files-from entries only below a module's root (the hub test
    of a host-form receiver caught it: every entry 'vanished'); entries then carry the
    subfolder before the /./ that -R keeps what follows of."""
    assert daemon_base(source) == (named, base)
