"""The cost of a manifest: walking a 1M-file tree, its file, and a diff of 0.1% changed.

1. ``walk`` of a tree of ``--files`` files (1,000 a folder, names like a distribution's
   packages, sizes and mtimes spread like a real tree's), warm cache: without a
   previous manifest, and with one whose files all have digests (a publisher's steady
   state: every digest carried over). The goal: ≤ 3 s for 1M files.
2. The manifest file: encode (columns, zlib, CRC), its size, decode.
3. ``diff`` of two manifests with 0.1% of the files changed (half of that rewritten,
   a quarter removed, a quarter added): as a walk leaves them (unchanged entries are the
   same tuples), and as read from their files (no tuple shared).
4. An experiment for the memory goal (≤ 150 MB for 1M files; a tuple an entry holds
   about 350): the walked manifest turned into columns (one bytes object of the paths,
   an array a field, the digests in one buffer), what they hold, and the time to make
   them and to make the tuples again. Not the product's form: what a columnar one would
   cost if it were built from the walk's tuples.

The tree is made once (``os.open``/``ftruncate``/``utime``/``close`` in two processes;
sparse files, no data) and kept in ``--cache`` for later runs; ``--rebuild`` makes it
again. It needs a million inodes: the run refuses to start without them.

    .venv/bin/python -m bench.manifest_walk [--files 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import array
import gc
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

from bench.stats import save, summary
from mirrorhook.changes import diff
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, walk
from mirrorhook.manifest_format import decode_manifest, encode_manifest

PER_FOLDER = 1000
MAX_FILES = 5_000_000
"""A bound on what a run may make: five million inodes and their folders."""
LAYOUT = "1"
"""Bumped when the tree's shape changes, so that an old cached tree is made again."""
T = TypeVar("T")
KIND_CODES = {Kind.FILE: 0, Kind.DIRECTORY: 1, Kind.SYMLINK: 2, Kind.OTHER: 3}
KINDS = tuple(KIND_CODES)


def _file_name(number: int) -> str:
    rng = random.Random(number)
    stem = hashlib.sha256(b"%d" % (number // 7)).hexdigest()[: rng.randint(4, 14)]
    version = f"{rng.randint(0, 40)}.{rng.randint(0, 99)}.{rng.randint(0, 9)}"
    return f"{stem}-{version}-{rng.randint(1, 30)}.el9.{rng.choice(['x86_64', 'noarch'])}.rpm"


def _make_folders(job: tuple[str, int, int, int]) -> int:
    """Make folders ``first`` to ``last`` (exclusive) of the tree and their files."""
    root, first, last, files = job
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = 0
    for folder in range(first, last):
        path = Path(root, f"{folder // 100:03d}", f"pkg{folder:05d}")
        path.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for number in range(folder * PER_FOLDER, min((folder + 1) * PER_FOLDER, files)):
                rng = random.Random(number)
                fd = os.open(_file_name(number) + f".{number}", flags, 0o644, dir_fd=dir_fd)
                try:
                    os.ftruncate(fd, int(rng.lognormvariate(11, 2.5)) % (1 << 32))
                    mtime = 1_450_000_000 * 10**9 + rng.randrange(10 * 365 * 86400 * 10**9)
                    os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
                made += 1
        finally:
            os.close(dir_fd)
    return made


def make_tree(root: Path, files: int) -> float:
    """Make the tree (unless a complete one is there); return the seconds it took."""
    stamp = root / ".complete"
    if stamp.exists() and stamp.read_text() == f"{LAYOUT} {files}\n":
        return 0.0
    if root.exists():
        shutil.rmtree(root)
    vfs = os.statvfs(root.parent)
    assert vfs.f_favail > files * 1.2 + 100_000, "not enough free inodes for the tree"
    root.mkdir(parents=True)
    start = time.perf_counter()
    folders = -(-files // PER_FOLDER)
    jobs = [(str(root), first, min(first + 20, folders), files) for first in range(0, folders, 20)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        made = sum(pool.map(_make_folders, jobs))
    assert made == files
    stamp.write_text(f"{LAYOUT} {files}\n")
    return time.perf_counter() - start


def timed(function: Callable[[], T], repeat: int) -> tuple[list[float], T]:
    """Run ``function`` ``repeat`` times; the seconds of each run and the last result."""
    samples: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - start)
    return samples, result


def timed_walks(function: Callable[[], T], repeat: int) -> tuple[list[float], list[float], T]:
    """Like ``timed``, and the seconds of a full garbage collection after each run (not
    in the run's time): a walk holds the collector off, and its million new entries are
    for the next collection to look at."""
    walks: list[float] = []
    collections: list[float] = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = function()
        walked = time.perf_counter()
        gc.collect()
        walks.append(walked - start)
        collections.append(time.perf_counter() - walked)
    return walks, collections, result


def with_digests(manifest: Manifest) -> Manifest:
    """``manifest`` as if every file had been hashed (the bench measures carrying digests
    over, not hashing: the files are sparse)."""
    entries = tuple(
        entry._replace(sha256=hashlib.sha256(entry.path).digest())
        if entry.kind is Kind.FILE
        else entry
        for entry in manifest.entries
    )
    return Manifest(manifest.marker, manifest.created, entries)


def changed(manifest: Manifest, fraction: float, rng: random.Random) -> Manifest:
    """A manifest of the same tree with ``fraction`` of its files changed: half of those
    rewritten (new size and mtime), a quarter removed, a quarter added next to others.
    Unchanged entries are the same tuples, as a walk leaves them."""
    entries = list(manifest.entries)
    files = [index for index, entry in enumerate(entries) if entry.kind is Kind.FILE]
    picked = rng.sample(files, int(len(files) * fraction))
    quarter = len(picked) // 4
    removed = set(picked[:quarter])
    for index in picked[quarter : 3 * quarter]:
        entries[index] = entries[index]._replace(size=entries[index].size + 1, mtime_ns=1)
    added: list[Entry] = [
        entries[index]._replace(path=entries[index].path + b".new", inode=0, sha256=None)
        for index in picked[3 * quarter :]
    ]
    kept = [entry for index, entry in enumerate(entries) if index not in removed]
    merged = sorted(kept + added, key=lambda entry: tree_key(entry.path))
    return Manifest(manifest.marker + "+", manifest.created + 1, tuple(merged))


def as_columns(manifest: Manifest) -> dict[str, Any]:
    """``manifest``'s entries as columns (section 4 of the module's text)."""
    count = len(manifest)
    fields = list(zip(*manifest.entries, strict=True))
    digests = bytearray(32 * count)
    for index, digest in enumerate(fields[10]):
        if digest is not None:
            digests[32 * index : 32 * index + 32] = digest
    return {
        "paths": b"".join(fields[0]),
        "ends": array.array("Q", accumulate(map(len, fields[0]))),
        "kinds": bytes(map(KIND_CODES.__getitem__, fields[1])),
        "sizes": array.array("q", fields[2]),
        "mtimes": array.array("q", fields[3]),
        "modes": array.array("H", fields[4]),
        "uids": array.array("I", fields[5]),
        "gids": array.array("I", fields[6]),
        "inodes": array.array("Q", fields[7]),
        "targets": {i: v for i, v in enumerate(fields[8]) if v is not None},
        "groups": {i: v for i, v in enumerate(fields[9]) if v is not None},
        "digests": digests,
        "digested": bytes(digest is not None for digest in fields[10]),
    }


def column_bytes(columns: dict[str, Any]) -> int:
    """What the columns' buffers hold (the sparse dicts of targets and groups left out)."""
    return sum(
        len(value) * getattr(value, "itemsize", 1)
        for value in columns.values()
        if not isinstance(value, dict)
    )


def from_columns(columns: dict[str, Any]) -> list[Entry]:
    """The entries again, as tuples."""
    ends, paths, digests = columns["ends"], columns["paths"], columns["digests"]
    starts = [0, *ends[:-1]]
    count = len(ends)
    return list(
        map(
            tuple.__new__,
            [Entry] * count,
            zip(
                [paths[start:end] for start, end in zip(starts, ends, strict=True)],
                [KINDS[code] for code in columns["kinds"]],
                columns["sizes"],
                columns["mtimes"],
                columns["modes"],
                columns["uids"],
                columns["gids"],
                columns["inodes"],
                [columns["targets"].get(index) for index in range(count)],
                [columns["groups"].get(index) for index in range(count)],
                [
                    bytes(digests[32 * i : 32 * i + 32]) if has else None
                    for i, has in enumerate(columns["digested"])
                ],
                strict=True,
            ),
        )
    )


def rss_mib() -> float:
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20


def measure(root: Path, repeat: int) -> dict[str, Any]:
    walk(root, marker="warm-up")  # the goal is a warm cache: fill it
    before = rss_mib()
    walks, collections, first = timed_walks(lambda: walk(root, marker="1"), repeat)
    resident = rss_mib() - before
    previous = with_digests(first)
    carried, _collections, second = timed_walks(lambda: walk(root, previous, marker="2"), repeat)
    assert second.undigested == 0, "every digest should have been carried over"
    encodes, data = timed(lambda: encode_manifest(previous), repeat)
    decodes, decoded = timed(lambda: decode_manifest(data), repeat)
    assert decoded == previous
    other = changed(previous, 0.001, random.Random(1))
    diffs, change = timed(lambda: diff(previous, other), repeat)
    old_read, new_read = decode_manifest(data), decode_manifest(encode_manifest(other))
    diffs_read, change_read = timed(lambda: diff(old_read, new_read), repeat)
    assert change_read == change
    to_columns, columns = timed(lambda: as_columns(previous), repeat)
    back, entries = timed(lambda: from_columns(columns), repeat)
    assert tuple(entries) == previous.entries
    return {
        "entries": len(first),
        "walk": summary(walks),
        "walk_with_digests": summary(carried),
        "collection_after_walk": summary(collections),
        "encode": summary(encodes),
        "decode": summary(decodes),
        "file_bytes": len(data),
        "file_bytes_without_digests": len(encode_manifest(first)),
        "diff_walked": summary(diffs),
        "diff_read": summary(diffs_read),
        "diff_paths": change.count,
        "resident_mib": resident,
        "to_columns": summary(to_columns),
        "from_columns": summary(back),
        "column_mib": column_bytes(columns) / 2**20,
    }


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    """``--files``, ``--cache`` and ``--rebuild``: the tree of this bench (and of the
    benches that reuse it, ``bench.changes_asked``)."""
    parser.add_argument("--files", type=int, default=1_000_000)
    cache = Path(tempfile.gettempdir(), "mirrorhook-bench-cache")
    parser.add_argument("--cache", type=Path, default=cache, help=f"default: {cache}")
    parser.add_argument("--rebuild", action="store_true", help="make the tree again")


def cached_tree(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The tree ``add_tree_arguments`` names, made unless it is kept; its root."""
    if not 1 <= args.files <= MAX_FILES:
        parser.error(f"--files must be between 1 and {MAX_FILES:,}")
    root: Path = args.cache / f"manifest-walk-{args.files}"
    if args.rebuild and root.exists():
        shutil.rmtree(root)
    args.cache.mkdir(parents=True, exist_ok=True)
    made = make_tree(root, args.files)
    print(f"tree: {args.files:,} files in {root}" + (f" (made in {made:.1f} s)" if made else ""))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tree_arguments(parser)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = measure(cached_tree(parser, args), args.repeat)
    rows = [
        ("walk, no previous manifest", results["walk"]),
        ("walk, every digest carried over", results["walk_with_digests"]),
        ("a full gc.collect() after a walk", results["collection_after_walk"]),
        ("encode the manifest file", results["encode"]),
        ("decode it", results["decode"]),
        ("diff, 0.1% changed, as walked", results["diff_walked"]),
        ("diff, 0.1% changed, as read", results["diff_read"]),
        ("experiment: tuples to columns", results["to_columns"]),
        ("experiment: columns to tuples", results["from_columns"]),
    ]
    print(f"{'':36} {'median':>9} {'p25':>9} {'p75':>9}")
    for label, stats in rows:
        print(f"{label:36} {stats['median']:8.3f}s {stats['p25']:8.3f}s {stats['p75']:8.3f}s")
    print(
        f"manifest file: {results['file_bytes'] / 2**20:.1f} MiB with digests, "
        f"{results['file_bytes_without_digests'] / 2**20:.1f} MiB without; "
        f"{results['entries']:,} entries, {results['diff_paths']:,} paths in the diff; "
        f"a manifest in memory about {results['resident_mib']:.0f} MiB; "
        f"as columns {results['column_mib']:.0f} MiB (digests included)"
    )
    path = save("manifest_walk", {"files": args.files, "repeat": args.repeat, **results})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
