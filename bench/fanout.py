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
from dataclasses import dataclass
from pathlib import Path

from bench.stats import ms, save, summary
from mirrorhook import signing
from tests.helpers import publish, stop_processes

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


@dataclass
class Farms:
    """Mirrors in ``FARMS`` processes: their webhook arrivals and the checks they answered."""

    outs: list[Path]
    checks: list[Path]
    processes: list[subprocess.Popen[bytes]]

    def checked(self) -> list[tuple[int, float]]:
        """(port, unix time) of every ``GET /CURRENT`` answered so far."""
        answered = []
        for log in self.checks:
            if log.exists():
                for line in log.read_text().splitlines():
                    port, at = line.split()
                    answered.append((int(port), float(at)))
        return answered

    def stop(self) -> None:
        stop_processes(self.processes)


def start_farms(
    case: Path, secrets: dict[int, str], hang: set[int], serving: str | None = None
) -> Farms:
    """Start the farm processes for the mirrors on ``secrets``' ports; wait until they listen.
    ``serving``: the marker each mirror serves at ``GET /CURRENT`` before any webhook."""
    ports = list(secrets)
    farms = Farms([], [], [])
    try:
        readies = []
        for index in range(FARMS):
            share = ports[index::FARMS]
            spec = case / f"farm{index}.json"
            spec.write_text(json.dumps({str(port): secrets[port] for port in share}))
            out, ready = case / f"farm{index}.out", case / f"farm{index}.ready"
            checks = case / f"farm{index}.checks"
            farms.outs.append(out)
            farms.checks.append(checks)
            command = [PYTHON, "-m", "bench.receiver_farm", "--spec", str(spec), "--out", str(out)]
            command += ["--ready", str(ready), "--checks", str(checks)]
            command += [*(["--serving", serving] if serving is not None else [])]
            command += ["--hang", *[str(p) for p in share if p in hang]]
            farms.processes.append(subprocess.Popen(command))
            readies.append(ready)
        deadline = time.monotonic() + 60
        while not all(ready.exists() for ready in readies):
            assert time.monotonic() < deadline, "the farms did not start listening"
            time.sleep(0.05)
    except BaseException:
        farms.stop()
        raise
    return farms


def mirror_tables(
    case: Path, secrets: dict[int, str], *, webhook: bool = True, check: bool = False
) -> list[str]:
    """``[[publisher.mirrors]]`` lines for the farms' mirrors, each with its secret file;
    ``webhook``: they get webhooks; ``check``: their ``GET /CURRENT`` is their check_url (and
    their base URL is listed in the mirror list)."""
    folder = case / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for port, secret in secrets.items():
        secret_file = folder / f"{port}.secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        lines += ["[[publisher.mirrors]]", f'name = "m{port}"', f'secret_file = "{secret_file}"']
        if webhook:
            lines.append(f'url = "http://127.0.0.1:{port}/v1/hook"')
        if check:
            lines.append(f'check_url = "http://127.0.0.1:{port}/CURRENT"')
            lines.append(f'urls = ["http://127.0.0.1:{port}/"]')
    return lines


@dataclass
class Case:
    """One case's publishes: rename → last healthy 2xx, and the checks answered meanwhile."""

    samples: list[float]
    checks_during: int


def run_case(
    tmp: Path,
    mirrors: int,
    hanging: int,
    rounds: int,
    concurrency: int,
    *,
    check_interval: float | None = None,
    pause: float = 0.5,
) -> Case:
    """Publish ``rounds`` times, ``pause`` seconds after the previous round ended; with
    ``check_interval``, every mirror also has a check_url, checked at that interval."""
    checking = check_interval is not None
    case = tmp / f"m{mirrors}-h{hanging}-c{concurrency}{'-checked' if checking else ''}"
    root = case / "repo"
    root.mkdir(parents=True)
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
        *([f"check_interval = {check_interval}"] if checking else []),
        *mirror_tables(case, secrets, check=checking),
    ]
    config = case / "publisher.toml"
    config.write_text("\n".join(lines) + "\n")
    farms = start_farms(case, secrets, hang)
    samples, windows = [], []
    try:
        with (case / "serve.log").open("w") as log:
            serve = subprocess.Popen(
                [PYTHON, "-m", "mirrorhook", "serve", "-c", str(config)], stderr=log
            )
        farms.processes.append(serve)
        wait_all(farms.outs, "0", healthy)
        for round_number in range(1, rounds + 1):
            time.sleep(pause)
            value = str(round_number)
            temp = root / ".CURRENT.new"
            temp.write_text(value + "\n")
            renamed = time.time()
            temp.replace(root / "CURRENT")
            seen = wait_all(farms.outs, value, healthy)
            last = max(seen[port] for port in healthy)
            samples.append(last - renamed)
            windows.append((renamed, last))
        during = sum(
            1 for _port, at in farms.checked() if any(lo <= at <= hi for lo, hi in windows)
        )
    finally:
        farms.stop()
    return Case(samples, during)


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
                samples = run_case(
                    Path(folder), mirrors, hanging, args.rounds, args.concurrency
                ).samples
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
