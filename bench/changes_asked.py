"""Mirrors asking the publisher at once for the same change, on a 1M-file tree.

Every mirror that missed the same publishes asks ``GET /v1/changes/NAME?from=OLD`` at
about the same moment (after the announcement of a change too large to travel inline).
Answering one means reading OLD's kept manifest and a diff with the current one
(manifest_keeper.py). This runs ``--mirrors`` such requests at once against a publisher's
``ManifestKeeper`` holding three manifests of §10's tree (``bench.manifest_walk``'s, made
once and kept: the current one and two older ones, each 0.1% apart), and reports the wall
time and how much the process's peak RSS grew.

    .venv/bin/python -m bench.changes_asked [--files 1000000] [--mirrors 10] [--rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.manifest_walk import add_tree_arguments, cached_tree, changed, with_digests
from bench.stats import save
from mirrorhook.manifest import walk
from mirrorhook.manifest_keeper import ManifestKeeper
from mirrorhook.publisher_config import PublisherConfig


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(root: Path, state: Path, mirrors: int) -> dict[str, Any]:
    keeper = ManifestKeeper(PublisherConfig(root, state, ()))
    rng = random.Random(1)
    manifest = with_digests(walk(root, marker="1"))
    keeper._store.save(manifest)
    for value in ("2", "3"):
        manifest = dataclasses.replace(changed(manifest, 0.001, rng), marker=value)
        keeper._store.save(manifest)
    keeper.current = manifest
    before = peak_mib()
    started = time.perf_counter()
    answers = await asyncio.gather(*(keeper.change_from("1") for _ in range(mirrors)))
    took = time.perf_counter() - started
    assert all(answer is not None and answer.to_marker == "3" for answer in answers)
    await keeper.close()
    paths = answers[0].count if answers[0] is not None else 0
    return {
        "mirrors": mirrors,
        "seconds": took,
        "peak_growth_mib": peak_mib() - before,
        "paths": paths,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tree_arguments(parser)
    parser.add_argument("--mirrors", type=int, default=10)
    args = parser.parse_args()
    root = cached_tree(parser, args)
    with tempfile.TemporaryDirectory(prefix="mirrorhook-changes-") as state:
        result = asyncio.run(measure(root, Path(state), args.mirrors))
    print(
        f"{result['mirrors']} mirrors asking at once for a {result['paths']:,}-path change: "
        f"{result['seconds']:.1f} s; peak RSS grew by {result['peak_growth_mib']:.0f} MiB"
    )
    print(f"results: {save('changes_asked', {'files': args.files, **result})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
