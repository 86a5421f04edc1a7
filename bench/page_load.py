"""Anonymous load on the publisher's pages while a publish fans out (a hostile review's case).

A real ``mirrorhook serve`` publisher with ``--mirrors`` mirrors in the fan-out's farm
processes (bench/fanout.py), each with a webhook and a check_url, so that the delivery
record and the freshness record both hold every mirror. Once the first marker is delivered
everywhere and every mirror shows ``fresh``:

1. idle: each unauthenticated GET (``PATHS``) ``--requests`` times in a row, a new
   connection each;
2. loaded: for each path of ``--paths`` (default ``/``), ``--clients`` clients in another
   process (bench/page_clients.py) fetch it in a loop for ``--seconds``, while this process
   samples ``GET /healthz`` (a new connection each, ``PROBE_EVERY`` apart: p50, p95, p99);
   ``PUBLISH_AFTER`` seconds in, a new marker is renamed into place, and the farms' arrivals
   say how many mirrors had it 5 s and 25 s after the rename, and when the last one did.

    .venv/bin/python -m bench.page_load [--mirrors 1000] [--clients 20] [--seconds 30]
        [--paths / /metrics] [--requests 50] [--accept-encoding identity]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fanout
from bench.freshness import get, serve, until
from bench.stats import ms, save, summary
from mirrorhook import signing
from tests.helpers import free_port, publish, wait_for_port

PATHS = ("/", "/v1/status", "/v1/mirrors", "/mirrorlist", "/metrics", "/healthz")
PROBE_EVERY = 0.02
PUBLISH_AFTER = 2.0
WITHIN = (5.0, 25.0)
"""Seconds after the rename at which the mirrors that have the publish are counted."""
LATE = 60.0
"""Seconds after the load the last arrivals are waited for."""


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def idle(base: str, requests: int) -> dict[str, Any]:
    """Each path ``requests`` times in a row: its cost with nothing else going on."""
    results = {}
    for path in PATHS:
        samples = []
        size = 0
        for _ in range(requests):
            began = time.perf_counter()
            status, body = get(base + path)
            samples.append(time.perf_counter() - began)
            assert status == 200, f"{path}: {status}"
            size = len(body)
        results[path] = {"bytes": size, **summary(samples)}
    return results


@dataclass
class Upstream:
    """The publisher under test: its tree, its address, and its mirrors' farms."""

    root: Path
    base: str
    farms: fanout.Farms
    ports: set[int]


def loaded(upstream: Upstream, path: str, value: str, args: argparse.Namespace) -> dict[str, Any]:
    """``path`` under ``args.clients`` clients; ``/healthz`` sampled; a publish of ``value``."""
    base = upstream.base
    command = [sys.executable, "-m", "bench.page_clients", "--url", base + path]
    command += ["--clients", str(args.clients), "--seconds", str(args.seconds)]
    command += ["--accept-encoding", args.accept_encoding]
    clients = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    renamed: list[float] = []

    def rename() -> None:
        renamed.append(time.time())
        publish(upstream.root, value)

    timer = threading.Timer(PUBLISH_AFTER, rename)
    timer.start()
    health: list[float] = []
    try:
        while clients.poll() is None:
            began = time.perf_counter()
            status, _body = get(base + "/healthz")
            health.append(time.perf_counter() - began)
            assert status == 200, f"/healthz: {status}"
            time.sleep(PROBE_EVERY)
        output, _ = clients.communicate(timeout=60)
    finally:
        timer.cancel()
        if clients.poll() is None:
            clients.kill()
            clients.wait()
    served = json.loads(output)
    ports = upstream.ports
    try:
        seen = fanout.wait_all(upstream.farms.outs, value, ports, timeout=LATE)
    except TimeoutError:
        seen = fanout.arrivals(upstream.farms.outs, value)
    after = [at - renamed[0] for port, at in seen.items() if port in ports]
    return {
        "path": path,
        "clients": served,
        "healthz": {
            "n": len(health),
            "p50": percentile(health, 0.5),
            "p95": percentile(health, 0.95),
            "p99": percentile(health, 0.99),
        },
        "mirrors": len(ports),
        **{f"within_{w:g}s": sum(1 for a in after if a <= w) for w in WITHIN},
        "received": len(after),
        "last_arrival_s": max(after) if after else None,
    }


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    root = folder / "repo"
    root.mkdir(parents=True)
    publish(root, "0")
    ports = fanout.listen_ports(args.mirrors)
    secrets = {port: signing.new_secret() for port in ports}
    listen = free_port()
    config = folder / "publisher.toml"
    lines = [
        "[publisher]",
        f'root = "{root}"',
        f'state_dir = "{folder / "state"}"',
        'name = "bench"',
        f'listen = ["127.0.0.1:{listen}"]',
        *fanout.mirror_tables(folder, secrets, check=True),
    ]
    config.write_text("\n".join(lines) + "\n")
    farms = fanout.start_farms(folder, secrets, set())
    base = f"http://127.0.0.1:{listen}"
    try:
        farms.processes.append(serve(config, folder / "serve.log"))
        wait_for_port(listen, 30)
        fanout.wait_all(farms.outs, "0", set(ports))

        def all_fresh() -> bool:
            rows = json.loads(get(base + "/v1/mirrors")[1])["mirrors"]
            time.sleep(0.2)
            return all(row["state"] == "fresh" for row in rows)

        until(all_fresh, "every mirror fresh at the first marker", timeout=120)
        time.sleep(1)
        quiet = idle(base, args.requests)
        upstream = Upstream(root, base, farms, set(ports))
        cases = [
            loaded(upstream, path, str(number), args)
            for number, path in enumerate(args.paths, start=1)
        ]
    finally:
        farms.stop()
    return {
        "mirrors": args.mirrors,
        "clients": args.clients,
        "accept_encoding": args.accept_encoding,
        "idle": quiet,
        "loaded": cases,
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"1. idle, {args.requests} requests in a row each ({result['mirrors']} mirrors)")
    for path, row in result["idle"].items():
        print(
            f"   GET {path:12} p50 {ms(row['median'])}  p95 {ms(row['p95'])}"
            f"  max {ms(row['max'])}  ({row['bytes']:,} bytes)"
        )
    print(
        f"2. {args.clients} clients (Accept-Encoding: {args.accept_encoding}) for"
        f" {args.seconds:g} s, a publish {PUBLISH_AFTER:g} s in"
    )
    for case in result["loaded"]:
        health, served = case["healthz"], case["clients"]
        print(
            f"   GET {case['path']:12} {served['answers']:>6} answers"
            f" ({served['answers'] / args.seconds:.0f}/s, p50 {served['p50_ms']:.1f} ms);"
            f" /healthz p50 {ms(health['p50'])} p95 {ms(health['p95'])} p99 {ms(health['p99'])}"
            f" ({health['n']} probes)"
        )
        last = case["last_arrival_s"]
        print(
            f"   {'':16} publish: {case['within_5s']}/{case['mirrors']} within 5 s,"
            f" {case['within_25s']} within 25 s, last at"
            f" {'never' if last is None else f'{last:.2f} s'} ({case['received']} received)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--paths", nargs="+", default=["/"])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--accept-encoding", default="gzip, deflate", help="the clients' (identity: no gzip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mirrorhook-page-load-") as folder:
        result = run(Path(folder), args)
    report(result, args)
    print(f"wrote {save('page_load', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
