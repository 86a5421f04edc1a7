"""Fan-out: from the marker's rename on the upstream to the last mirror's 2xx.

A real ``mirrorhook serve`` publisher watches a tree; its mirrors are webhook receivers in
other processes (a few farm processes, each listening on many ports and verifying every
signature). Each round renames a new marker into place and waits until every healthy
mirror has recorded it; the time reported is the last healthy arrival minus the rename.
Optionally 10% of the mirrors accept the connection and never answer.

    .venv/bin/python -m bench.fanout [--mirrors 10 100 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import ms, save, summary
from mirrorhook import signing
from tests.helpers import publish

FARMS = 4
PYTHON = sys.executable


def listen_ports(count: int, first: int = 20000) -> list[int]:
    """Return ``count`` distinct free ports below the ephemeral range, so that the
    publisher's own outgoing connections can never take one of them."""
    ports: list[int] = []
    candidate = first
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
                ports.append(candidate)
            except OSError:
                pass
        candidate += 1
    return ports


def arrivals(outs: list[Path], value: str) -> dict[int, float]:
    seen: dict[int, float] = {}
    for out in outs:
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            port, got, at = line.split()
            if got == value:
                seen[int(port)] = float(at)
    return seen


def wait_all(
    outs: list[Path], value: str, ports: set[int], timeout: float = 60
) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = arrivals(outs, value)
        if ports <= seen.keys():
            return seen
        time.sleep(0.01)
    missing = len(ports - arrivals(outs, value).keys())
    raise TimeoutError(f"{missing} mirrors never received marker {value!r}")


def run_case(tmp: Path, mirrors: int, hanging: int, rounds: int, concurrency: int) -> list[float]:
    case = tmp / f"m{mirrors}-h{hanging}-c{concurrency}"
    (case / "secrets").mkdir(parents=True)
    root = case / "repo"
    root.mkdir()
    publish(root, "0")
    ports = listen_ports(mirrors)
    hang = set(ports[:hanging])
    healthy = set(ports) - hang
    secrets = {port: signing.new_secret() for port in ports}
    lines = [
        "[publisher]",
        f'root = "{root}"',
        f'state_dir = "{case / "state"}"',
        'name = "bench"',
        f"concurrency = {concurrency}",
        "timeout = 10",
    ]
    for port in ports:
        secret_file = case / "secrets" / f"{port}.secret"
        secret_file.write_text(secrets[port])
        secret_file.chmod(0o600)
        lines += [
            "[[publisher.mirrors]]",
            f'name = "m{port}"',
            f'url = "http://127.0.0.1:{port}/v1/hook"',
            f'secret_file = "{secret_file}"',
        ]
    config = case / "publisher.toml"
    config.write_text("\n".join(lines) + "\n")
    outs, farms = [], []
    for index in range(FARMS):
        share = ports[index::FARMS]
        spec = case / f"farm{index}.json"
        spec.write_text(json.dumps({str(port): secrets[port] for port in share}))
        out, ready = case / f"farm{index}.out", case / f"farm{index}.ready"
        outs.append(out)
        command = [PYTHON, "-m", "bench.receiver_farm", "--spec", str(spec), "--out", str(out)]
        command += ["--ready", str(ready), "--hang", *[str(p) for p in share if p in hang]]
        farms.append((subprocess.Popen(command), ready))
    for _process, ready in farms:
        while not ready.exists():
            time.sleep(0.05)
    with (case / "serve.log").open("w") as log:
        serve = subprocess.Popen(
            [PYTHON, "-m", "mirrorhook", "serve", "-c", str(config)], stderr=log
        )
    samples = []
    try:
        wait_all(outs, "0", healthy)
        for round_number in range(1, rounds + 1):
            time.sleep(0.5)
            value = str(round_number)
            temp = root / ".CURRENT.new"
            temp.write_text(value + "\n")
            renamed = time.time()
            temp.replace(root / "CURRENT")
            seen = wait_all(outs, value, healthy)
            samples.append(max(seen[port] for port in healthy) - renamed)
    finally:
        serve.terminate()
        serve.wait(30)
        for process, _ready in farms:
            process.terminate()
            process.wait(30)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mirrorhook-fanout-") as folder:
        for mirrors in args.mirrors:
            for hanging in (0, mirrors // 10):
                samples = run_case(Path(folder), mirrors, hanging, args.rounds, args.concurrency)
                results.append({"mirrors": mirrors, "hanging": hanging, **summary(samples)})
    print(
        f"rename → last healthy 2xx, {args.rounds} publishes each, concurrency {args.concurrency}"
    )
    print(f"{'mirrors':>8} {'hanging':>8} {'median':>11} {'p25':>11} {'p75':>11} {'max':>11}")
    for row in results:
        print(
            f"{row['mirrors']:>8} {row['hanging']:>8} {ms(row['median'])} {ms(row['p25'])}"
            f" {ms(row['p75'])} {ms(row['max'])}"
        )
    print(f"wrote {save('fanout', {'concurrency': args.concurrency, 'cases': results})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
