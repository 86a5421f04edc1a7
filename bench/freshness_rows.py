"""What one rendering of the mirror lists costs for 1,000 mirrors, outside any server.

``Freshness.rows`` (every mirror's state: the page, ``/v1/mirrors`` and the lists read it)
and ``mirrorlist.listings`` (the lists of every protocol, rendered and gzipped once a change)
for a tree of ``--mirrors`` mirrors, half of them with webhooks, two publishes in, a third
of them behind. Best of ``--repeat`` runs, in milliseconds.

    .venv/bin/python -m bench.freshness_rows [--mirrors 1000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mirrorhook import mirrorlist
from mirrorhook.freshness import Freshness
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig


def tree(folder: Path, count: int) -> Freshness:
    mirrors = tuple(
        MirrorConfig(
            name=f"m{index}",
            secret=None,
            secret_file=None,
            url=f"https://m{index}.example/v1/hook" if index % 2 else None,
            check_url=f"https://m{index}.example/CURRENT",
            urls=(f"https://m{index}.example/repo/", f"rsync://m{index}.example/repo/"),
        )
        for index in range(count)
    )
    freshness = Freshness(PublisherConfig(root=folder / "repo", mirrors=mirrors, state_dir=folder))
    freshness.published("1")
    freshness.published("2")
    for index, mirror in enumerate(mirrors):
        freshness.observed(mirror.name, "2" if index % 3 else "1", None)
    return freshness


def best(work: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``work``, in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        freshness = tree(Path(folder), args.mirrors)
        rows = best(freshness.rows, args.repeat)
        lists = best(lambda: mirrorlist.listings(freshness), args.repeat)
    print(f"{args.mirrors} mirrors: rows() {rows:.1f} ms, listings() {lists:.1f} ms")


if __name__ == "__main__":
    main()
