"""Snapshots (docs/design.md#snapshots): the switch, a snapshot sync against an in-place
one, and readers through nginx during syncs.

1. The switch: ``snapshots.switch`` of a built snapshot (rename complete, note the
   replaced one, ``<target>.previous`` then ``target`` each by a symlink renamed over the
   old, fsyncs), and the ``target`` rename alone; p50 and max over ``--switches``.
2. A tree of ``--files`` files (bench.delta_sync's, made once and kept) with 0.1% changed
   per publish: one in-place mirror and one snapshot mirror sync each publish through a
   real rsync daemon on 127.0.0.1 (in-process ``Syncer``s, the whole-tree transfer both:
   a snapshot is built whole); their times side by side, and the disk the snapshot mode
   takes beyond the in-place tree (``du`` counts a hard-linked file once). The same on a
   btrfs image on a loop device, in a mount namespace of the benchmark's own (as root,
   with btrfs-progs): builds are btrfs snapshots there, and the disk a round adds is what
   the file system's used space grows by.
3. Readers: ``--rate`` requests a second from virtual clients of a yum-like tree
   (tests/web.py) through Debian's nginx with contrib/nginx-snapshots.conf, while the
   mirror syncs ``--publishes`` publishes; errors (non-200, wrong hash) in place and in
   snapshot mode.

    .venv/bin/python -m bench.snapshots [--files 100000] [--repeat 5] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.delta_sync import change_tree, make_tree, mirror
from bench.stats import save, summary
from mirrorhook import snapshots
from mirrorhook.manifest import walk
from mirrorhook.syncer import Syncer
from mirrorhook.trigger import Trigger, Via
from tests.helpers import RsyncDaemon, make_upstream, receiver_config, receiver_toml, rsync_daemon
from tests.web import YumLike, nginx


def switches(work: Path, count: int) -> dict[str, Any]:
    """Time ``count`` switches of small snapshots (the switch does not depend on size)."""
    upstream = make_upstream(work / "switch-upstream", count=4)
    (work / "switch").mkdir()
    loaded = receiver_config(
        work / "switch", upstream=f"{upstream}/", target=str(work / "switch/tree")
    ).receiver
    assert loaded is not None
    config = replace(loaded, publish="snapshot", grace=0)
    whole, rename = [], []
    for index in range(count):
        build = snapshots.prepare(config, time.time() + index)  # a name of its own each
        (build.path / "CURRENT").write_text(f"{index}\n")
        started = time.perf_counter()
        snapshots.switch(config, build, time.time())
        whole.append(time.perf_counter() - started)
        link = config.target.with_name(".bench-link")
        link.symlink_to(snapshots.layout(config).link(build.name))
        started = time.perf_counter()
        link.rename(config.target)
        rename.append(time.perf_counter() - started)
        snapshots.expire(config, time.time() + 10)
    found = {"switch": summary(whole), "target_rename": summary(rename)}
    for name, got in found.items():
        print(
            f"  {name:<14} p50 {got['median'] * 1000:.2f} ms, max {got['max'] * 1000:.2f} ms"
            f" ({got['n']} times)"
        )
    return found


def disk(path: Path) -> int:
    """Bytes ``du`` counts below ``path`` (each hard-linked file once)."""
    args = ["du", "-s", "--block-size=1", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def three_mirrors(work: Path, daemon: RsyncDaemon, srv: Path) -> dict[str, Syncer]:
    """An in-place mirror and two snapshot mirrors of the daemon's tree, in ``srv``:
    ``grace`` 600 (every build without a spare) and 0 (every build from the spare)."""
    srv.mkdir(exist_ok=True)
    snapshot = replace(mirror(work / "snap-state", daemon, srv / "snap"), publish="snapshot")
    spare = replace(mirror(work / "spare-state", daemon, srv / "spare"), publish="snapshot")
    return {
        "in-place": Syncer(mirror(work / "inplace-state", daemon, srv / "inplace")),
        "snapshot": Syncer(snapshot),
        "spare": Syncer(replace(spare, grace=0)),
    }


async def timed_rounds(
    args: argparse.Namespace,
    root: Path,
    mirrors: dict[str, Syncer],
    after: Callable[[int, str], None],
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each mirror's first copy, then ``--repeat`` publishes of 0.1% changed, each synced
    by every mirror (in turn, the order reversed every other round); ``after(round,
    name)`` runs after each sync. The seconds of the first copies, and of each sync."""
    rng = random.Random(3)
    manifest = walk(root, marker=(root / "CURRENT").read_text().strip())
    first = {}
    for name, syncer in mirrors.items():
        started = time.monotonic()
        await syncer.sync(if_changed=False, trigger=Trigger(Via.COMMAND))
        first[name] = time.monotonic() - started
    rows: dict[str, list[float]] = {name: [] for name in mirrors}
    value = int(manifest.marker)
    for round_number in range(args.repeat):
        value += 1
        change_tree(root, manifest, str(value), rng)
        manifest = walk(root, manifest, marker=str(value))
        order = list(mirrors.items())
        for name, syncer in order if round_number % 2 == 0 else order[::-1]:
            started = time.monotonic()
            await syncer.sync(if_changed=True, trigger=Trigger(Via.WEBHOOK, "bench"))
            rows[name].append(time.monotonic() - started)
            after(round_number, name)
    return first, rows


def show_times(rows: dict[str, list[float]]) -> dict[str, Any]:
    """Print each mirror's median against the in-place one's; return the summaries."""
    found = {name: summary(values) for name, values in rows.items()}
    base = found["in-place"]["median"]
    for name, got in found.items():
        spread = f"min {got['min']:.3f}, max {got['max']:.3f}"
        print(f"  {name:<9} median {got['median']:.3f} s ({spread}), {got['median'] / base:.2f}x")
    return found


async def tree_sizes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root, made_in = make_tree(args.cache, args.files, rebuild=False)
    print(f"\n{args.files:,} files in {root}" + (f" (made in {made_in:.0f} s)" if made_in else ""))
    srv = work / "srv"
    extra = 0

    def after(round_number: int, name: str) -> None:
        nonlocal extra
        if round_number == 0 and name == "snapshot":  # its tree and the one it replaced
            extra = disk(srv / "snap.snapshots") - disk(srv / "inplace")

    with rsync_daemon(work / "daemon", root) as daemon:
        first, rows = await timed_rounds(args, root, three_mirrors(work, daemon, srv), after)
        tree_bytes = disk(srv / "inplace")
    shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in first.items())
    print(f"  first copy: {shown}")
    found = show_times(rows)
    base = found["in-place"]["median"]
    share = extra / tree_bytes
    print(f"  snapshot mode: {extra / 1e6:.1f} MB more disk than in place")
    print(f"  ({share:.2%} of the {tree_bytes / 1e6:.0f} MB tree, with the replaced one kept)")
    return {
        **found,
        "files": args.files,
        "first_copy_s": first,
        "ratio_linked": found["snapshot"]["median"] / base,
        "ratio_spare": found["spare"]["median"] / base,
        "extra_bytes": extra,
        "tree_bytes": tree_bytes,
    }


def used_bytes(folder: Path) -> int:
    """The bytes the file system of ``folder`` uses, once btrfs has written its trees out."""
    subprocess.run(["btrfs", "filesystem", "sync", str(folder)], check=True)
    got = os.statvfs(folder)
    return (got.f_blocks - got.f_bfree) * got.f_frsize


def mount_btrfs(work: Path) -> Path:
    """A 4 GiB btrfs (a sparse image on a loop device) mounted at ``work/disk``."""
    image, disk = work / "btrfs.img", work / "disk"
    disk.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", "4g", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(disk)], check=True)
    return disk


def unmount(disk: Path) -> None:
    subprocess.run(["umount", str(disk)], check=True)


async def on_btrfs(args: argparse.Namespace) -> dict[str, Any]:
    """In a mount namespace of its own (``--btrfs-child``): a btrfs image on a loop device;
    the three mirrors on it; their times, and what a snapshot round adds to the space the
    file system uses (its new tree's metadata and the changed files, the replaced tree
    kept: the growth over the snapshot mirror's first sync after the in-place one's)."""
    root, _ = make_tree(args.cache, args.files, rebuild=False)
    work = Path(tempfile.mkdtemp(prefix="mirrorhook-btrfs-", dir=args.cache))
    used_after: dict[str, int] = {}
    volume = work / "disk"

    def after(round_number: int, name: str) -> None:
        if round_number == 0:
            used_after[name] = used_bytes(volume)

    try:
        volume = mount_btrfs(work)
        with rsync_daemon(work / "daemon", root) as daemon:
            mirrors = three_mirrors(work, daemon, volume)
            _first, rows = await timed_rounds(args, root, mirrors, after)
        unmount(volume)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = {name: summary(values) for name, values in rows.items()}
    added = used_after["snapshot"] - used_after["in-place"]  # round 0 keeps the order
    tree = used_after["in-place"] // 3  # the three copies, before any snapshot is replaced
    return {**found, "tree_bytes": tree, "snapshot_added_bytes": added}


def btrfs_run(args: argparse.Namespace) -> dict[str, Any] | None:
    """``on_btrfs`` in a child of its own mount namespace; ``None`` when it cannot run."""
    tools = ("unshare", "mkfs.btrfs", "btrfs")
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in tools):
        print("\nno btrfs here (needs root, unshare and btrfs-progs): skipped")
        return None
    command = ["unshare", "-m", sys.executable, "-m", "bench.snapshots", "--btrfs-child"]
    command += ["--files", str(args.files), "--repeat", str(args.repeat)]
    command += ["--cache", str(args.cache)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    print(f"\non btrfs, {args.files:,} files, 0.1% changed:")
    show_times({name: [found[name]["median"]] for name in ("in-place", "snapshot", "spare")})
    share = found["snapshot_added_bytes"] / found["tree_bytes"]
    print(f"  a snapshot round adds {found['snapshot_added_bytes'] / 1e6:.1f} MB used")
    print(f"  ({share:.2%} of the {found['tree_bytes'] / 1e6:.0f} MB tree, the replaced one kept)")
    return found


class Replay:
    """Virtual clients at ``rate`` requests a second: each reads the index, the list, then
    (after up to 1.2 s) every package, checking hashes."""

    def __init__(self, base: str, rate: int) -> None:
        self.base = base
        self.rate = rate
        self.requests = 0
        self.errors: list[str] = []
        self.tokens = asyncio.Semaphore(0)

    async def pace(self, seconds: float) -> None:
        """Release ``rate`` request tokens a second, in 10 ms steps, for ``seconds``."""
        end = time.monotonic() + seconds
        step = self.rate / 100
        owed = 0.0
        while time.monotonic() < end:
            owed += step
            for _ in range(int(owed)):
                self.tokens.release()
            owed -= int(owed)
            await asyncio.sleep(0.01)

    async def get(self, session: aiohttp.ClientSession, path: str) -> bytes | None:
        await self.tokens.acquire()
        self.requests += 1
        try:
            async with session.get(self.base + path) as answer:
                body = await answer.read()
                if answer.status != 200:
                    self.errors.append(f"{path}: HTTP {answer.status}")
                    return None
                return body
        except aiohttp.ClientError as err:
            self.errors.append(f"{path}: {err}")
            return None

    async def client(self, session: aiohttp.ClientSession, seed: int) -> None:
        chance = random.Random(seed)
        while True:
            index = await self.get(session, "repodata/repomd.xml")
            if index is None:
                continue
            _, path, sha = index.decode().split()
            listing = await self.get(session, path)
            if listing is None:
                continue
            if hashlib.sha256(listing).hexdigest() != sha:
                self.errors.append(f"{path}: wrong hash")
            await asyncio.sleep(chance.uniform(0.0, 1.2))
            for line in listing.decode().splitlines():
                name, want = line.split()
                body = await self.get(session, name)
                if body is not None and hashlib.sha256(body).hexdigest() != want:
                    self.errors.append(f"{name}: wrong hash")


async def readers(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    folder = work / f"readers-{mode}"
    upstream = YumLike(folder / "upstream")
    upstream.publish()
    served = folder / "srv"
    served.mkdir(parents=True)  # folder too: the config is written there
    with rsync_daemon(folder / "daemon", upstream.root) as daemon:
        config = receiver_toml(
            folder, upstream=daemon.url, target=str(served / "el9"), publish=mode
        )
        command = [sys.executable, "-m", "mirrorhook", "sync", "--config", str(config)]
        first = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await first.wait()
        with nginx(folder / "nginx", served, "el9") as base:
            replay = Replay(base, args.rate)
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector) as session:
                # Few enough clients that each one's reads span at most one switch (the
                # fallback reaches one tree back), publishes 3 s apart.
                clients = [asyncio.create_task(replay.client(session, n)) for n in range(80)]
                duration = args.publishes * 3.0 + 1.0
                pacing = asyncio.create_task(replay.pace(duration))
                started = time.monotonic()
                for _ in range(args.publishes):
                    await asyncio.sleep(2.0)
                    upstream.publish()
                    sync = await asyncio.create_subprocess_exec(
                        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                    await sync.wait()
                await pacing
                elapsed = time.monotonic() - started
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)
    rate = replay.requests / elapsed
    print(
        f"  {mode:<9} {replay.requests} requests in {elapsed:.1f} s ({rate:.0f}/s), "
        f"{len(replay.errors)} errors" + (f", e.g. {replay.errors[0]}" if replay.errors else "")
    )
    return {"requests": replay.requests, "seconds": elapsed, "errors": len(replay.errors)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mirrorhook-snapshots-", dir=args.cache))
    try:
        print(f"the switch ({args.switches} times):")
        found: dict[str, Any] = {"switch": switches(work, args.switches)}
        found["tree"] = await tree_sizes(args, work)
        found["btrfs"] = btrfs_run(args)
        if shutil.which("nginx") is None:
            print("\nno nginx (make web installs it): the readers' replay is skipped")
            return found
        print(f"\nreaders through nginx at {args.rate} requests/s, {args.publishes} publishes:")
        found["readers"] = {
            mode: await readers(args, work, mode) for mode in ("in-place", "snapshot")
        }
        return found
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=8)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "mirrorhook-bench-cache"
    )
    parser.add_argument("--btrfs-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.btrfs_child:  # in the mount namespace btrfs_run made: the result on stdout
        print(json.dumps(asyncio.run(on_btrfs(args))))
        return
    save("snapshots", asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
