"""``mirrorhook verify`` (docs/design.md#verify): the local tree against the publisher's
signed manifest of its marker, with a real publisher ``serve``, a real mirror ``serve``
and real rsync."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mirrorhook.manifest import walk
from mirrorhook.verify import compare
from tests.helpers import (
    Processes,
    RsyncDaemon,
    make_upstream,
    marker_of,
    mirrorhook,
    publish,
    receiver_toml,
    wait_until,
)
from tests.pushed import pushed_mirror


def contents_compared(out: str) -> int:
    found = re.search(r"the contents of (\d+) files", out)
    return int(found.group(1)) if found else -1


@pytest.mark.slow
def test_verify_finds_a_file_rewritten_with_its_size_and_mtime_put_back(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    mirrored = pushed_mirror(tmp_path, processes, daemon)
    tree = mirrored.tree
    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(tree) == "2", what="the sync by change")
    # The publisher hashes in the background: once it has, every file's contents count.
    wait_until(
        lambda: contents_compared(mirrorhook("verify", "-c", mirrored.config).stdout) == 21,
        what="the publisher's digests",
    )
    same = mirrorhook("verify", "-c", mirrored.config)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout == (
        f"{tree}: identical to the publisher's manifest of marker '2' "
        "(25 entries, the contents of 21 files)\n"
    )

    victim = tree / "dir1" / "file1.rpm"
    before = victim.stat()
    victim.write_bytes(b"X" * before.st_size)  # same size...
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and mtime
    quick = mirrorhook("verify", "-c", mirrored.config, "--quick")
    assert quick.returncode == 0  # metadata alone cannot see it
    assert "(25 entries)" in quick.stdout
    found = mirrorhook("verify", "-c", mirrored.config)
    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        f"{tree}: 1 differences from the publisher's manifest of marker '2' "
        "(25 entries, the contents of 21 files)",
        "  dir1/file1.rpm: other contents (same size and mtime)",
    ]

    (tree / "dir2" / "file2.rpm").unlink()
    (tree / "dir3" / "file3.rpm").chmod(0o600)
    (tree / "dir0" / "stray.rpm").write_text("stray\n")
    shown = mirrorhook("verify", "-c", mirrored.config, "--quick").stdout.splitlines()
    assert shown[1:] == [
        "  dir0/stray.rpm: not upstream (a file here)",
        "  dir2/file2.rpm: missing (a file upstream)",
        "  dir3/file3.rpm: mode 0600 here, 0644 upstream",
    ]


def test_verify_says_why_it_cannot_compare(tmp_path: Path, daemon: RsyncDaemon) -> None:
    (tmp_path / "m").mkdir()
    config = receiver_toml(tmp_path / "m", upstream=daemon.url)
    never = mirrorhook("verify", "-c", config)
    assert never.returncode == 1
    assert never.stdout.endswith(": cannot verify: the tree has no marker: it was never synced\n")
    assert mirrorhook("sync", "-c", config).returncode == 0
    keyless = mirrorhook("verify", "-c", config)
    assert keyless.returncode == 1
    assert "verify needs the upstream's public key (public_key_file)" in keyless.stdout


def test_compare_sees_kinds_symlinks_and_hard_links(tmp_path: Path) -> None:
    upstream = make_upstream(tmp_path / "up", count=4)
    mirror = make_upstream(tmp_path / "mirror", count=4)
    for root in (upstream, mirror):
        for path in root.rglob("*.rpm"):
            os.utime(path, ns=(0, 10**18))
    (upstream / "dir0" / "link").symlink_to("file0.rpm")
    (mirror / "dir0" / "link").symlink_to("elsewhere.rpm")
    os.link(upstream / "dir0" / "file0.rpm", upstream / "dir1" / "twin.rpm")
    (mirror / "dir1" / "twin.rpm").write_bytes((mirror / "dir0" / "file0.rpm").read_bytes())
    os.utime(mirror / "dir1" / "twin.rpm", ns=(0, 10**18))
    (upstream / "dir2" / "file2.rpm").unlink()
    (upstream / "dir2" / "file2.rpm").mkdir()
    found = compare(
        walk(upstream, marker="1"),
        walk(mirror, marker="1"),
        ignore=frozenset({b"CURRENT"}),
        contents=False,
    )
    assert [str(difference) for difference in found] == [
        "dir0/file0.rpm: hard-linked with other paths than upstream",
        "dir0/link: the symlink points elsewhere",
        "dir1/twin.rpm: hard-linked with other paths than upstream",
        "dir2/file2.rpm: a file here, a directory upstream",
    ]
