"""Trees for the manifest and delta tests: awkward names, random operations, snapshots.

``Tree`` applies one operation of each kind a publish can make (files added, removed,
renamed, rewritten; kinds swapped; symlinks retargeted; modes and owners changed; hard
links made and broken; FIFOs) to a real folder, choosing with hypothesis's ``data``. ``snapshot``
records everything ``rsync -aH`` is asked to keep, read with plain ``os`` calls, so the
tests compare trees without the code under test. ``later_than`` waits until what is
written next has a later ctime than a file (the settled-walk tests).
"""

# Bytes paths throughout, for names that are not UTF-8: pathlib takes text only.
# ruff: noqa: PTH101, PTH102, PTH104, PTH105, PTH108, PTH112, PTH114, PTH115, PTH123, PTH208, PTH211

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

NAMES = (
    b"a",
    b"b",
    b"with space",
    b"-dash",
    b"new\nline",
    b"\xff\xfe latin",
    b"#hash",
    b";semi",
    b"a-b",
    b"a.txt",
    b"%25",
)
"""Names that break naive code: spaces, a leading dash (an option to a careless command),
a newline (a list entry to a careless list), bytes that are not UTF-8, the comment marks
of rsync's list files, names that sort between a folder and its contents ("a-b" and
"a.txt" come between "a" and "a/x" in byte order), and a percent sign."""
CONTENTS = (b"", b"one", b"two", b"three\n", b"x" * 700)
MODES = (0o644, 0o600, 0o755, 0o640, 0o444)
FOLDER_MODES = (0o755, 0o700, 0o750)
BASE_TIME = 1_600_000_000
"""Times the tests give entries: whole seconds apart, long before the test runs (see
``Tree.settle``)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What rsync -aH keeps of one entry."""

    kind: str
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    target: bytes | None
    sha256: bytes | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    entries: dict[bytes, Facts]
    links: frozenset[frozenset[bytes]]
    """The groups of paths that are one file (hard links within the tree)."""


def snapshot(root: bytes) -> Snapshot:
    """Everything below ``root`` (the root itself left out)."""
    entries: dict[bytes, Facts] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    pending = [b""]
    while pending:
        folder = pending.pop()
        for name in os.listdir(root + b"/" + folder if folder else root):
            path = folder + b"/" + name if folder else name
            full = root + b"/" + path
            st_ = os.lstat(full)
            kind, target, digest, size = _kind(st_.st_mode), None, None, 0
            if kind == "directory":
                pending.append(path)
            elif kind == "symlink":
                target = os.readlink(full)
            elif kind == "file":
                size = st_.st_size
                with open(full, "rb") as file:
                    digest = hashlib.sha256(file.read()).digest()
                inodes.setdefault((st_.st_dev, st_.st_ino), set()).add(path)
            entries[path] = Facts(
                kind=kind,
                size=size,
                mtime_ns=st_.st_mtime_ns,
                mode=stat.S_IMODE(st_.st_mode),
                uid=st_.st_uid,
                gid=st_.st_gid,
                target=target,
                sha256=digest,
            )
    links = frozenset(frozenset(group) for group in inodes.values() if len(group) > 1)
    return Snapshot(entries=entries, links=links)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


class Tree:
    """A real folder that hypothesis changes one operation at a time."""

    def __init__(self, root: bytes, data: st.DataObject) -> None:
        self.root = root
        self.data = data
        self.step = 0
        self.unsafe = False
        """Whether a symlink pointed out of the tree at some step: rsync skips those, so
        copies may differ from the source from then on (the same way each)."""

    def full(self, path: bytes) -> bytes:
        return self.root + b"/" + path if path else self.root

    def paths(self) -> list[bytes]:
        return sorted(snapshot(self.root).entries)

    def of_kind(self, kind: str) -> list[bytes]:
        entries = snapshot(self.root).entries
        return sorted(path for path, facts in entries.items() if facts.kind == kind)

    def pick(self, choices: list[bytes], label: str) -> bytes | None:
        if not choices:
            return None
        return self.data.draw(st.sampled_from(choices), label=label)

    def new_path(self) -> bytes | None:
        """A free path in an existing folder (the root included)."""
        folder = self.data.draw(st.sampled_from([b"", *self.of_kind("directory")]), label="in")
        name = self.data.draw(st.sampled_from(NAMES), label="name")
        path = folder + b"/" + name if folder else name
        return None if os.path.lexists(self.full(path)) else path

    # --- operations: each may find nothing to do, which is fine --------------------------

    def add_file(self) -> None:
        if (path := self.new_path()) is not None:
            self.write(path, self.data.draw(st.sampled_from(CONTENTS), label="content"))

    def add_folder(self) -> None:
        if (path := self.new_path()) is not None:
            os.mkdir(self.full(path))

    def add_symlink(self) -> None:
        if (path := self.new_path()) is not None:
            os.symlink(self.target(), self.full(path))

    def add_fifo(self) -> None:
        """A FIFO: ``rsync -a`` implies ``--specials`` and copies it."""
        if (path := self.new_path()) is not None:
            os.mkfifo(self.full(path), 0o640)

    def remove(self) -> None:
        if (path := self.pick(self.paths(), "remove")) is not None:
            _remove(self.full(path))

    def rename(self) -> None:
        path = self.pick(self.paths(), "rename")
        new = self.new_path()
        if path is None or new is None or (new + b"/").startswith(path + b"/"):
            return
        os.rename(self.full(path), self.full(new))

    def rewrite_same_size(self) -> None:
        """New content of the same size, in place (the inode and its links stay)."""
        if (path := self.pick(self.of_kind("file"), "rewrite")) is not None:
            full = self.full(path)
            size = os.lstat(full).st_size
            with open(full, "r+b") as file:
                content = file.read(size)
                file.seek(0)
                file.write(bytes((byte + 1) % 256 for byte in content))
            assert os.lstat(full).st_size == size

    def replace_file(self) -> None:
        """A new file renamed over an old one: a new inode, so its hard links break."""
        if (path := self.pick(self.of_kind("file"), "replace")) is not None:
            temporary = self.full(path) + b".new~"
            with open(temporary, "wb") as file:
                file.write(self.data.draw(st.sampled_from(CONTENTS), label="content"))
            os.replace(temporary, self.full(path))

    def change_kind(self) -> None:
        """A file, folder or symlink becomes one of the other two kinds."""
        if (path := self.pick(self.paths(), "change kind")) is None:
            return
        kind = self.data.draw(st.sampled_from(["file", "directory", "symlink"]), label="into")
        full = self.full(path)
        _remove(full)
        if kind == "file":
            self.write(path, b"became a file")
        elif kind == "directory":
            os.mkdir(full)
            self.write(path + b"/inside", b"inside")
        else:
            os.symlink(self.target(), full)

    def retarget(self) -> None:
        """A symlink made again with another target and its old mtime (``cp -a`` does
        that): only the target tells."""
        if (path := self.pick(self.of_kind("symlink"), "retarget")) is not None:
            mtime = os.lstat(self.full(path)).st_mtime_ns
            os.unlink(self.full(path))
            os.symlink(self.target(), self.full(path))
            os.utime(self.full(path), ns=(mtime, mtime), follow_symlinks=False)

    def chmod(self) -> None:
        if path := self.pick(self.of_kind("file") + self.of_kind("directory"), "chmod"):
            is_folder = os.path.isdir(self.full(path))
            modes = FOLDER_MODES if is_folder else MODES
            os.chmod(self.full(path), self.data.draw(st.sampled_from(modes), label="mode"))

    def chown(self) -> None:
        if os.geteuid() != 0:
            return  # only root can give a file away; rsync keeps owners only as root too
        if (path := self.pick(self.paths(), "chown")) is not None:
            owner = self.data.draw(st.sampled_from([0, 1, 4242]), label="owner")
            os.lchown(self.full(path), owner, owner)

    def link(self) -> None:
        """A hard link to an existing file."""
        path = self.pick(self.of_kind("file"), "link")
        new = self.new_path()
        if path is not None and new is not None:
            os.link(self.full(path), self.full(new))

    def touch(self) -> None:
        """Only the mtime changes (``settle`` gives it a new second)."""
        if (path := self.pick(self.paths(), "touch")) is not None:
            os.utime(self.full(path), ns=(0, 1), follow_symlinks=False)

    def write(self, path: bytes, content: bytes) -> None:
        with open(self.full(path), "wb") as file:
            file.write(content)

    def target(self) -> bytes:
        """A symlink target: in the tree, dangling, or one level up (still in the tree
        for a symlink in a folder; --safe-links skips it at the root, as it should)."""
        choices = [b"a", b"a/b", b"missing", b"../a", b"with space", b"-dash"]
        return self.data.draw(st.sampled_from(choices), label="target")

    OPERATIONS: tuple[Callable[[Tree], None], ...] = (
        add_file,
        add_folder,
        add_symlink,
        add_fifo,
        remove,
        rename,
        rewrite_same_size,
        replace_file,
        change_kind,
        retarget,
        chmod,
        chown,
        link,
        touch,
    )

    def seed(self) -> None:
        """A small tree with something of each kind: folders in folders, awkward names,
        a hardlink group, symlinks; then ``settle``."""
        for folder in (b"a", b"a/b", b"with space", b"a-b", b"a/b/\xff\xfe latin", b";semi"):
            os.mkdir(self.full(folder))
        for path in (b"a/one", b"#hash", b";semi/new\nline", b"-dash", b"a.txt"):
            self.write(path, path * 3)
        os.link(self.full(b"a/one"), self.full(b"a-b/one"))
        os.link(self.full(b"a/one"), self.full(b"with space/;semi"))
        os.symlink(b"../a.txt", self.full(b"a/link"))
        os.symlink(b"missing", self.full(b"a/b/dangling"))
        self.settle()

    def change(self, operations: int) -> None:
        """Apply ``operations`` operations, then ``settle``."""
        for _ in range(operations):
            operation = self.data.draw(st.sampled_from(self.OPERATIONS), label="operation")
            operation(self)
        self.settle()

    def settle(self) -> None:
        """Give each entry this step changed a time of its own: this step's second, plus
        nanoseconds from its path; note whether a symlink points out of the tree.

        rsync compares times in whole seconds (``--modify-window=0``): a folder that a
        run writes into in the same second as the source's time of it keeps its new
        sub-second time, in the full transfer as in the delta. Source times whole
        seconds in the past keep every difference a difference for rsync, and the
        nanoseconds check that times are carried exactly.
        """
        self.step += 1
        settle(self.root, BASE_TIME + 10 * self.step)
        for path, facts in snapshot(self.root).entries.items():
            if facts.kind == "symlink" and _unsafe(path, facts.target or b""):
                self.unsafe = True


def settle(root: bytes, second: int) -> None:
    """Give each entry below ``root`` with a time of now (written since the last call) or
    near 0 (touched) the time ``second`` plus nanoseconds from its path (see
    ``Tree.settle``); ``second`` must be later than the last call's."""
    for path, facts in snapshot(root).entries.items():
        if facts.mtime_ns >= second * 10**9 or facts.mtime_ns < BASE_TIME * 10**9:
            nanoseconds = int.from_bytes(hashlib.sha256(path).digest()[:4], "big") % 10**9
            stamp = second * 10**9 + nanoseconds
            os.utime(root + b"/" + path, ns=(stamp, stamp), follow_symlinks=False)


def _unsafe(path: bytes, target: bytes) -> bool:
    """Whether rsync's ``--safe-links`` skips this symlink: it points out of the tree."""
    depth = path.count(b"/")
    for part in target.split(b"/"):
        depth += -1 if part == b".." else 0 if part in (b"", b".") else 1
        if depth < 0 or target.startswith(b"/"):
            return True
    return False


def _remove(path: bytes) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def later_than(path: Path) -> None:
    """Wait until the filesystem's clock has moved past ``path``'s ctime, so what is written
    next is seen as written after it. File times come from the kernel's coarse clock, a
    tick (1 to 10 ms) behind: 20 ms past it is past it."""
    since = path.stat().st_ctime_ns + 20_000_000
    while time.time_ns() <= since:
        time.sleep(0.005)
