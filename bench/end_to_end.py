"""End to end: marker renamed on the upstream → the mirror's marker installed, its tree equal.

A real rsync daemon serves the upstream tree; a publisher and a receiver (backoff 0) run as
real ``mirrorhook serve`` processes. Each publish changes 1% of the files, renames a new
marker into place and waits for the mirror's marker; the tree is then compared by content
(not timed). From the processes' logs, each publish's time is broken down into its steps.
Compared with the seed's hourly cron job: a publish waits on average 30 min for the next
run, then the random sleep of 0..3000 s (1500 s on average) — 3300 s, before rsync starts.

Three socket settings, measured in the same run (README, "Latency: TCP_NODELAY"):
``neither`` — the mirror's rsync without TCP_NODELAY (its ``rsync_args`` set a neutral
``--sockopts=SO_KEEPALIVE``, which replaces ours: mirrorhook as shipped before) and an
upstream daemon without ``socket options = TCP_NODELAY``; ``mirror`` — mirrorhook's
default against such an upstream (what a mirror of someone else's upstream gets);
``both`` — the default against an upstream that sets it (contrib/rsyncd.conf).

    .venv/bin/python -m bench.end_to_end [--files 100 10000] [--publishes 20]
        [--settings neither mirror both]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.stats import ms, save, summary
from tests.helpers import (
    free_port,
    make_upstream,
    publish,
    publisher_toml,
    receiver_toml,
    rsync_daemon,
    trees_equal,
    wait_for_port,
)

CRON_MEAN_LAG = 30 * 60 + 3000 / 2
"""The seed's schedule: half an hour to the next run at minute 1, then sleep 0..3000 s."""
STEPS = [
    ("event + read marker", "publisher", r"marker '{v}': announcing"),
    ("sign + POST + verify", "receiver", r"trigger \(webhook from .*marker '{v}'\)"),
    ("schedule + lock", "receiver", r"sync started \(webhook from .*marker '{v}'\)"),
    (
        "read upstream marker",
        "receiver",
        r"stage 1: transferring the tree for upstream marker '{v}'",
    ),
    ("stage 1 + re-read marker", "receiver", r"stage 2: installing marker '{v}'"),
    ("stage 2 + record", "receiver", r"sync finished .*marker '{v}' installed"),
]
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def stamp_of(log: Path, pattern: str) -> float | None:
    compiled = re.compile(pattern)
    for line in log.read_text().splitlines():
        if compiled.search(line) and (found := _STAMP.match(line)):
            return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


SETTINGS = {
    # name: (the upstream daemon sets TCP_NODELAY, the mirror's extra rsync_args)
    "neither": (False, ["--sockopts=SO_KEEPALIVE"]),
    "mirror": (False, []),
    "both": (True, []),
}


def run_tree(folder: Path, files: int, publishes: int, setting: str) -> dict[str, object]:
    upstream = make_upstream(folder / "upstream", marker="0", count=files)
    mirror = folder / "mirror"
    daemon_nodelay, mirror_args = SETTINGS[setting]
    with rsync_daemon(folder, upstream, nodelay=daemon_nodelay) as daemon:
        port = free_port()
        receiver = receiver_toml(
            folder, upstream=daemon.url, port=port, poll_interval=0, rsync_args=mirror_args
        )
        (folder / "pub").mkdir()
        publisher = publisher_toml(
            folder / "pub", root=upstream, mirrors=[("m", f"http://127.0.0.1:{port}/v1/hook")]
        )
        (folder / "receiver.secret").write_text((folder / "pub/secrets/m.secret").read_text())
        logs = {"receiver": folder / "receiver.log", "publisher": folder / "publisher.log"}
        processes = []
        for role, config in (("receiver", receiver), ("publisher", publisher)):
            with logs[role].open("w") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)],
                        stderr=log,
                    )
                )
            if role == "receiver":
                wait_for_port(port)
        marker = mirror / "CURRENT"
        latencies: list[float] = []
        steps: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
        try:
            deadline = time.monotonic() + 120
            while not (marker.exists() and marker.read_text().strip() == "0"):
                assert time.monotonic() < deadline, "the first sync did not finish"
                time.sleep(0.01)
            time.sleep(0.5)
            for number in range(1, publishes + 1):
                value = str(number)
                changed = {
                    f"dir{index % 4}/file{index}.rpm": f"publish {value}\n"
                    for index in range(number, files, 100)
                }
                for name, text in changed.items():
                    (upstream / name).write_text(text)
                renamed = time.time()
                publish(upstream, value)
                while marker.read_text().strip() != value:
                    assert time.monotonic() < deadline + 60 * number, "a sync did not finish"
                    time.sleep(0.002)
                latencies.append(time.time() - renamed)
                assert trees_equal(upstream, mirror), f"mirror differs after publish {value}"
                time.sleep(0.3)
                previous = renamed
                for name, role, pattern in STEPS:
                    at = stamp_of(logs[role], pattern.format(v=re.escape(value)))
                    if at is not None:
                        steps[name].append(max(0.0, at - previous))
                        previous = at
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    return {
        "files": files,
        "setting": setting,
        "latency": summary(latencies),
        "steps": {name: summary(values) for name, values in steps.items() if values},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        results = [
            run_tree(Path(folder) / f"t{n}-{setting}", n, args.publishes, setting)
            for n in args.files
            for setting in args.settings
        ]
    print(f"rename → mirror's marker installed, backoff 0, {args.publishes} publishes, 1% changed")
    print("TCP_NODELAY set by: neither (as shipped before), the mirror only, or both ends")
    header = f"{'files':>8} {'nodelay':>8} {'p50':>11} {'p95':>11} {'max':>11} {'vs neither':>11}"
    print(f"{header}   vs cron's mean lag ({CRON_MEAN_LAG:.0f} s)")
    baseline: dict[object, float] = {}
    for result in results:
        latency = result["latency"]
        assert isinstance(latency, dict)
        if result["setting"] == "neither":
            baseline[result["files"]] = latency["median"]
        before = baseline.get(result["files"])
        ratio = f"{latency['median'] / before:.2f}" if before else "-"
        print(
            f"{result['files']:>8} {result['setting']:>8} {ms(latency['median'])} "
            f"{ms(latency['p95'])} {ms(latency['max'])} {ratio:>11}"
            f"   {CRON_MEAN_LAG / latency['median']:,.0f}x sooner"
        )
    for result in results:
        print(
            f"where the time goes ({result['files']} files, {result['setting']}, median per step):"
        )
        steps = result["steps"]
        assert isinstance(steps, dict)
        for name, row in steps.items():
            print(f"  {name:28} {ms(row['median'])}")
    print(f"wrote {save('end_to_end', {'cron_mean_lag_s': CRON_MEAN_LAG, 'trees': results})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
