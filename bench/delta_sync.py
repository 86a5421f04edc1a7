"""Sync at the cost of the change: a sync by change against the full transfer, side by side.

For trees of ``--files`` files (100,000 and 1,000,000 by default; 1,000 a folder, small
files of real data, made once on local disk and kept in ``--cache``), each publish
changes 0.1% of the files (half rewritten, a quarter removed, a quarter added). Two
mirrors of the same tree sync each publish from a real rsync daemon on 127.0.0.1 with
TCP_NODELAY, through the sync engine (``Syncer``: both marker reads, the install): one by
the change (``diff`` of the publisher's manifests, through the wire format), one by the
full transfer. Measured for each: the sync's wall time and the CPU the rsync daemon spent
serving it (its reaped children's user + system time, from ``/proc``). Also the
publisher's side: the walk of the new tree (with the previous manifest) and the memory a
manifest holds. At each size after the first, the mirror by change then also syncs
``--repeat`` publishes that change as many files as the first size's did (100 of
100,000): the same change in a tree ten times larger, which is what "the cost follows the
change" compares (0.1% of a larger tree is a larger change).

Then ``--mirrors`` mirrors (100) of a ``--mirror-files`` tree (100,000) sync one publish
at once, all by change and then all by the full transfer (copies of one synced tree,
hard-linked: rsync replaces what it writes), for the daemon's total CPU.

    .venv/bin/python -m bench.delta_sync [--files 100000,1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.stats import save, summary
from mirrorhook.changes import Change, decode_change, diff
from mirrorhook.manifest import Manifest, walk
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import Trigger, Via
from tests.helpers import RsyncDaemon, publish, receiver_config, rsync_daemon

PER_FOLDER = 1000
MAX_FILES = 5_000_000
LAYOUT = "1"
TICK = os.sysconf("SC_CLK_TCK")
ROWS = ("walk", "delta", "full", "delta_cpu", "full_cpu", "delta_small")


def _make_folders(job: tuple[str, int, int, int]) -> None:
    root, first, last, files = job
    for folder in range(first, last):
        path = f"{root}/pool/f{folder:04}"
        Path(path).mkdir(parents=True, exist_ok=True)
        rng = random.Random(folder)
        for number in range(folder * PER_FOLDER, min(files, (folder + 1) * PER_FOLDER)):
            name = f"{path}/pkg-{number:07}-{rng.randint(0, 99)}.{rng.randint(1, 9)}.el9.rpm"
            with open(name, "wb") as file:  # noqa: PTH123 - a million of them: no Path objects
                file.write(rng.randbytes(rng.randint(100, 3000)))
            stamp = 1_600_000_000 + rng.randint(0, 300_000_000)
            os.utime(name, (stamp, stamp))


def make_tree(cache: Path, files: int, *, rebuild: bool) -> tuple[Path, float]:
    """The tree of ``files`` files (made once, kept); the seconds making it took (0: kept)."""
    root = cache / f"delta-{files}-{LAYOUT}"
    if (root / "CURRENT").exists() and not rebuild:
        return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    folders = (files + PER_FOLDER - 1) // PER_FOLDER
    step = max(1, folders // 16)
    jobs = [
        (str(root), first, min(folders, first + step), files) for first in range(0, folders, step)
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_make_folders, jobs))
    publish(root, "0")
    return root, time.monotonic() - started


def change_tree(
    root: Path, manifest: Manifest, value: str, rng: random.Random, count: int | None = None
) -> None:
    """Change 0.1% of the files (or ``count``): half rewritten, a quarter removed, a quarter
    added."""
    files = [entry.path for entry in manifest.entries if entry.path.endswith(b".rpm")]
    count = count or max(4, len(files) // 1000)
    picked = rng.sample(files, count)
    stamp = int(time.time()) - 60 + int(value)
    for path in picked[: count // 2]:
        full = os.fsencode(root) + b"/" + path
        with open(full, "wb") as file:  # noqa: PTH123
            file.write(rng.randbytes(rng.randint(100, 3000)))
        os.utime(full, (stamp, stamp))
    for path in picked[count // 2 : count * 3 // 4]:
        os.unlink(os.fsencode(root) + b"/" + path)  # noqa: PTH108
    for index in range(count - count * 3 // 4):
        folder = root / "pool" / f"f{rng.randrange(len(files) // PER_FOLDER or 1):04}"
        (folder / f"new-{value}-{index}.rpm").write_bytes(rng.randbytes(500))
    publish(root, value)


def daemon_cpu(daemon: RsyncDaemon) -> float:
    """CPU seconds of the daemon and its reaped children (each connection is a child)."""
    fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICK


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mirror(folder: Path, daemon: RsyncDaemon, target: Path) -> ReceiverConfig:
    folder.mkdir(parents=True, exist_ok=True)
    config = receiver_config(
        folder,
        upstream=daemon.url,
        target=str(target),
        full_sync_interval=0,
        max_delete=1_000_000,
        max_changes=1_000_000,
        max_delete_fraction=1,
    ).receiver
    assert config is not None
    return config


async def timed_sync(
    syncer: Syncer, daemon: RsyncDaemon, change: Change | None
) -> tuple[float, float]:
    """One sync; its wall seconds and the daemon's CPU seconds for it."""
    cpu = daemon_cpu(daemon)
    started = time.monotonic()
    await syncer.sync(if_changed=True, trigger=Trigger(Via.WEBHOOK, "bench", change))
    wall = time.monotonic() - started
    await asyncio.sleep(0.2)  # the daemon reaps its child
    return wall, daemon_cpu(daemon) - cpu


def copy_tree(source: Path, target: Path) -> None:
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)


async def one_size(
    files: int, args: argparse.Namespace, work: Path, small: int | None = None
) -> dict[str, Any]:
    """Both mirrors through ``--repeat`` publishes of 0.1% of ``files``; with ``small``, the
    mirror by change through as many more of ``small`` files each (the smallest size's
    change), to compare the same change at two tree sizes."""
    root, made_in = make_tree(args.cache, files, rebuild=args.rebuild)
    print(f"\n{files:,} files in {root}" + (f" (made in {made_in:.0f} s)" if made_in else ""))
    rng = random.Random(files)
    with rsync_daemon(work / f"daemon-{files}", root) as daemon:
        gc.collect()
        before = rss_mb()
        started = time.monotonic()
        manifest = walk(root, marker=(root / "CURRENT").read_text().strip())
        first_walk = time.monotonic() - started
        held = rss_mb() - before
        full_tree, delta_tree = work / f"full-{files}", work / f"delta-{files}"
        full = Syncer(mirror(work / f"full-state-{files}", daemon, full_tree))
        started = time.monotonic()
        await full.sync(if_changed=False, trigger=Trigger(Via.COMMAND))
        first_copy = time.monotonic() - started
        copy_tree(full_tree, delta_tree)
        by_change = Syncer(mirror(work / f"delta-state-{files}", daemon, delta_tree))
        rows: dict[str, list[float]] = {key: [] for key in ROWS}
        value = int(manifest.marker)
        for _ in range(args.repeat):
            value += 1
            change_tree(root, manifest, str(value), rng)
            started = time.monotonic()
            new = walk(root, manifest, marker=str(value))
            rows["walk"].append(time.monotonic() - started)
            change = decode_change(diff(manifest, new).encode(), 1_000_000)
            manifest = new
            for name, syncer, given in (("delta", by_change, change), ("full", full, None)):
                wall, cpu = await timed_sync(syncer, daemon, given)
                rows[name].append(wall)
                rows[f"{name}_cpu"].append(cpu)
        paths_changed = change.count
        for _ in range(args.repeat if small else 0):
            value += 1
            change_tree(root, manifest, str(value), rng, count=small)
            new = walk(root, manifest, marker=str(value))
            change = decode_change(diff(manifest, new).encode(), 1_000_000)
            manifest = new
            rows["delta_small"].append((await timed_sync(by_change, daemon, change))[0])
        shutil.rmtree(delta_tree)
        shutil.rmtree(full_tree)
    summaries = {name: summary(values) for name, values in rows.items() if values}
    print(f"  first full copy {first_copy:.1f} s; first walk {first_walk:.2f} s")
    print(f"  a manifest holds {held:.0f} MB; a change names {paths_changed} paths")
    if small:
        print(f"  delta_small: changes of {small} files ({change.count} paths)")
    for name in filter(summaries.__contains__, ROWS):
        got = summaries[name]
        spread = f"min {got['min']:.3f}, max {got['max']:.3f}"
        print(f"  {name:<10} median {got['median']:.3f} s ({spread})")
    time_ratio = summaries["full"]["median"] / summaries["delta"]["median"]
    cpu_ratio = summaries["full_cpu"]["median"] / max(summaries["delta_cpu"]["median"], 1 / TICK)
    print(f"  ratios: time full/delta {time_ratio:.0f}, daemon CPU full/delta {cpu_ratio:.0f}")
    return {
        **summaries,
        "files": files,
        "made_in_s": made_in,
        "first_copy_s": first_copy,
        "first_walk_s": first_walk,
        "manifest_rss_mb": held,
        "paths_changed": paths_changed,
        "small_files_changed": small,
    }


async def many_mirrors(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--mirrors`` mirrors sync one publish at once: by change, then by the full transfer."""
    root, _made = make_tree(args.cache, args.mirror_files, rebuild=args.rebuild)
    rng = random.Random(7)
    with rsync_daemon(work / "daemon-many", root) as daemon:
        manifest = walk(root, marker=(root / "CURRENT").read_text().strip())
        seed = work / "many-seed"
        await Syncer(mirror(work / "many-seed-state", daemon, seed)).sync(
            if_changed=False, trigger=Trigger(Via.COMMAND)
        )
        groups: dict[str, list[Syncer]] = {"delta": [], "full": []}
        for name, syncers in groups.items():
            for index in range(args.mirrors):
                target = work / f"many-{name}-{index}"
                copy_tree(seed, target)
                syncers.append(Syncer(mirror(work / f"many-{name}-{index}-state", daemon, target)))
        value = str(int(manifest.marker) + 1)
        change_tree(root, manifest, value, rng)
        change = decode_change(diff(manifest, walk(root, manifest, marker=value)).encode(), 10**6)
        result: dict[str, Any] = {"mirrors": args.mirrors, "files": args.mirror_files}
        for name, syncers in groups.items():
            given = change if name == "delta" else None
            cpu, started = daemon_cpu(daemon), time.monotonic()
            await asyncio.gather(
                *(
                    s.sync(if_changed=True, trigger=Trigger(Via.WEBHOOK, "bench", given))
                    for s in syncers
                )
            )
            wall = time.monotonic() - started
            await asyncio.sleep(0.5)
            result[name] = {"wall_s": wall, "daemon_cpu_s": daemon_cpu(daemon) - cpu}
            spent = result[name]["daemon_cpu_s"]
            print(f"  {args.mirrors} mirrors by {name}: {wall:.2f} s, daemon CPU {spent:.2f} s")
        ratio = result["full"]["daemon_cpu_s"] / max(result["delta"]["daemon_cpu_s"], 1 / TICK)
        print(f"  daemon CPU, full / by change: {ratio:.0f}")
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mirrorhook-delta-", dir=args.cache))
    try:
        small = max(4, args.files[0] // 1000)  # the smallest size's change, at every size
        sizes = [
            await one_size(files, args, work, None if index == 0 else small)
            for index, files in enumerate(args.files)
        ]
        print(f"\n{args.mirrors} mirrors of {args.mirror_files:,} files, one publish at once:")
        many = await many_mirrors(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(sizes) > 1:
        growth = sizes[-1]["delta"]["median"] / sizes[0]["delta"]["median"]
        print(f"\nsync by change at {args.files[-1]:,} / at {args.files[0]:,} files: {growth:.2f}")
        same = sizes[-1]["delta_small"]["median"] / sizes[0]["delta"]["median"]
        big, little = f"{args.files[-1]:,}", f"{args.files[0]:,}"
        print(f"the same change ({small} files) at {big} / at {little} files: {same:.2f}")
    return {"sizes": sizes, "many": many, "small_files_changed": small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--files", type=lambda text: [int(n) for n in text.split(",")], default=[100_000, 1_000_000]
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mirrors", type=int, default=100)
    parser.add_argument("--mirror-files", type=int, default=100_000)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "mirrorhook-bench-cache"
    )
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if max(args.files) > MAX_FILES:
        parser.error(f"at most {MAX_FILES:,} files")
    args.cache.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async(args))
    save("delta_sync", results)


if __name__ == "__main__":
    main()
