"""Receiver capacity: signed webhooks per second on one core, /healthz p99 under load.

A real ``mirrorhook serve`` receiver pinned to CPU 0; a load generator in another process
pinned to CPU 1 sends validly signed webhooks (distinct ids; the marker equals the mirror's,
so each is verified, recorded against replays and answered "up-to-date" without starting
a sync) over keep-alive connections while probing /healthz. Reports requests per second,
latency, /healthz p99, the server's CPU time per request and its RSS before and after.

    .venv/bin/python -m bench.capacity [--requests 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.stats import save
from tests.helpers import (
    free_port,
    make_upstream,
    receiver_toml,
    rsync_daemon,
    wait_for_port,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if len(os.sched_getaffinity(0)) > 1 else []


@contextlib.contextmanager
def synced_receiver() -> Iterator[tuple[Path, Path, int]]:
    """A receiver config in a temporary folder, its tree already synced from a real rsync
    daemon (marker 1): the folder, the config and the port it will listen on."""
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        upstream = make_upstream(tmp / "upstream", marker="1")
        with rsync_daemon(tmp, upstream) as daemon:
            port = free_port()
            config = receiver_toml(tmp, upstream=daemon.url, port=port, poll_interval=0)
            subprocess.run(
                [sys.executable, "-m", "mirrorhook", "sync", "-c", str(config)],
                check=True,
                capture_output=True,
            )
            yield tmp, config, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with synced_receiver() as (tmp, config, port):
        with (tmp / "serve.log").open("w") as log:
            server = subprocess.Popen(
                [*pinned(0), sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)],
                stderr=log,
            )
        try:
            wait_for_port(port)
            rss_before = rss_mb(server.pid)
            for _ in range(args.repeat):
                cpu_before = cpu_seconds(server.pid)
                result = subprocess.run(
                    [
                        *pinned(1), sys.executable, "-m", "bench.load_generator",
                        "--url", f"http://127.0.0.1:{port}",
                        "--secret-file", str(tmp / "receiver.secret"), "--marker", "1",
                        "--requests", str(args.requests),
                        "--connections", str(args.connections),
                    ],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                run = json.loads(result.stdout)
                run["cpu_ms_per_request"] = (
                    1000 * (cpu_seconds(server.pid) - cpu_before) / args.requests
                )
                runs.append(run)
            rss_after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    median = {
        key: statistics.median(float(run[key]) for run in runs)
        for key in ("per_second", "p50_ms", "p99_ms", "healthz_p99_ms", "cpu_ms_per_request")
    }
    print(
        f"receiver capacity: {args.requests} signed webhooks x {args.repeat}, "
        f"{args.connections} keep-alive connections, server on one core"
    )
    print(
        f"  requests/s       {median['per_second']:9.0f}   (runs: "
        + ", ".join(f"{run['per_second']:.0f}" for run in runs)
        + ")"
    )
    print(f"  latency p50/p99  {median['p50_ms']:6.1f} / {median['p99_ms']:.1f} ms")
    print(f"  /healthz p99     {median['healthz_p99_ms']:6.1f} ms during the load")
    print(f"  CPU per request  {median['cpu_ms_per_request']:6.3f} ms")
    print(f"  RSS              {rss_before:6.1f} MB before, {rss_after:.1f} MB after")
    print(f"  statuses         {runs[-1]['statuses']}")
    path = save(
        "capacity",
        {"runs": runs, "median": median, "rss_mb": {"before": rss_before, "after": rss_after}},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
