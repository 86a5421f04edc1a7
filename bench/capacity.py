"""Receiver capacity: signed webhooks per second on one core, /healthz p99 under load.

A real ``mirrorhook serve`` receiver pinned to CPU 0; a load generator in another process
pinned to CPU 1 sends validly signed webhooks — ``v1`` (HMAC: the receiver holds the
secret), then ``v1a`` (Ed25519: it holds only the upstream's public key) — with distinct
ids; the marker equals the mirror's, so each is verified, recorded against replays and
answered "up-to-date" without starting a sync, over keep-alive connections while probing
/healthz. Reports requests per second, latency, /healthz p99, the server's CPU time per
request and its RSS before and after, per scheme.

    .venv/bin/python -m bench.capacity [--requests 20000] [--repeat 3] [--schemes v1 v1a]
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
from typing import Any

from bench.stats import save
from tests.helpers import (
    free_port,
    key_pair,
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
def synced_receiver(scheme: str = "v1") -> Iterator[tuple[Path, Path, int, Path]]:
    """A receiver config in a temporary folder, its tree already synced from a real rsync
    daemon (marker 1): the folder, the config, the port it will listen on, and the key the
    webhooks are to be signed with — the shared secret (``v1``), or the upstream's private
    key while the receiver holds only its public key (``v1a``)."""
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        upstream = make_upstream(tmp / "upstream", marker="1")
        with rsync_daemon(tmp, upstream) as daemon:
            port = free_port()
            if scheme == "v1a":
                signer, public = key_pair(tmp, "upstream")
                keys = {"secret_file": None, "public_key_file": str(public)}
            else:
                signer, keys = tmp / "receiver.secret", {}
            config = receiver_toml(tmp, upstream=daemon.url, port=port, poll_interval=0, **keys)
            subprocess.run(
                [sys.executable, "-m", "mirrorhook", "sync", "-c", str(config)],
                check=True,
                capture_output=True,
            )
            yield tmp, config, port, signer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--schemes", nargs="+", choices=("v1", "v1a"), default=["v1", "v1a"])
    args = parser.parse_args()
    results = {scheme: measure(args, scheme) for scheme in args.schemes}
    for scheme, result in results.items():
        runs, median, rss = result["runs"], result["median"], result["rss_mb"]
        print(
            f"receiver capacity, {scheme}: {args.requests} signed webhooks x {args.repeat}, "
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
        print(f"  RSS              {rss['before']:6.1f} MB before, {rss['after']:.1f} MB after")
        print(f"  statuses         {runs[-1]['statuses']}")
    # The v1 run keeps the document's old shape (earlier results compare with it).
    path = save("capacity", {**results.get("v1", {}), "schemes": results})
    print(f"wrote {path}")
    return 0


def measure(args: argparse.Namespace, scheme: str) -> dict[str, Any]:
    """``args.repeat`` runs of the load against a fresh receiver verifying ``scheme``."""
    runs = []
    with synced_receiver(scheme) as (tmp, config, port, signer):
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
                        "--secret-file", str(signer), "--marker", "1",
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
    return {"runs": runs, "median": median, "rss_mb": {"before": rss_before, "after": rss_after}}


if __name__ == "__main__":
    raise SystemExit(main())
