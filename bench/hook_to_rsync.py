"""Webhook POST → rsync started, and → marker installed, on a real ``mirrorhook serve``.

A receiver with ``backoff = 0`` runs as its own process against a real rsync daemon on
127.0.0.1. Each round publishes a new marker, POSTs a signed webhook and records when the
first rsync process (the upstream-marker read) started — a wrapper script timestamps each
exec — and when the new marker appeared in the mirror.

    .venv/bin/python -m bench.hook_to_rsync [--rounds 20] [--files 100]
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import ms, save, summary
from mirrorhook import signing
from tests.helpers import (
    make_upstream,
    publish,
    receiver_toml,
    rsync_daemon,
    signed_webhook,
    wait_for_port,
)

POLL = 0.002


def stamping_rsync(folder: Path, log: Path) -> Path:
    """An rsync wrapper that appends its start time (ns since the epoch) before exec."""
    path = folder / "stamping-rsync"
    path.write_text(f'#!/bin/sh\necho "$(date +%s%N)" >> {log}\nexec rsync "$@"\n')
    path.chmod(0o755)
    return path


def wait_until(condition: object, timeout: float = 30) -> float:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(POLL)
    raise TimeoutError("benchmark round timed out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"response": [], "rsync_start": [], "installed": []}
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        upstream = make_upstream(tmp / "upstream", count=args.files)
        stamps = tmp / "stamps"
        with rsync_daemon(tmp, upstream) as daemon:
            config = receiver_toml(tmp, upstream=daemon.url, rsync=str(stamping_rsync(tmp, stamps)))
            port = int(config.read_text().split("127.0.0.1:")[1].split('"')[0])
            secret = signing.Secret.parse((tmp / "receiver.secret").read_text())
            marker = tmp / "mirror" / "CURRENT"
            with (tmp / "serve.log").open("w") as log:
                serve = subprocess.Popen(
                    [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)],
                    stderr=log,
                )
            try:
                wait_for_port(port)
                wait_until(marker.exists)  # the startup check's first sync
                time.sleep(0.5)
                for round_number in range(2, args.rounds + 2):
                    value = str(round_number)
                    publish(upstream, value, {f"round/{value}.rpm": value})
                    seen = len(stamps.read_text().split())
                    body, headers = signed_webhook(secret, value)
                    connection = http.client.HTTPConnection("127.0.0.1", port)
                    sent = time.time()
                    connection.request("POST", "/v1/hook", body, headers)
                    response = connection.getresponse()
                    answered = time.time()
                    assert response.status == 202, response.read()
                    connection.close()
                    wait_until(lambda: len(stamps.read_text().split()) > seen)  # noqa: B023
                    started = int(stamps.read_text().split()[seen]) / 1e9
                    installed = wait_until(
                        lambda: marker.read_text().strip() == value  # noqa: B023
                    )
                    samples["response"].append(answered - sent)
                    samples["rsync_start"].append(started - sent)
                    samples["installed"].append(installed - sent)
                    time.sleep(0.2)
            finally:
                serve.terminate()
                serve.wait(30)
    result = {name: summary(values) for name, values in samples.items()}
    print(f"webhook → sync on loopback, backoff 0, {args.files}-file tree, {args.rounds} rounds")
    print(f"{'from the POST to':28} {'median':>11} {'p95':>11} {'max':>11}")
    for name, label in [
        ("response", "the 202 answer"),
        ("rsync_start", "the first rsync exec"),
        ("installed", "the marker installed"),
    ]:
        row = result[name]
        print(f"{label:28} {ms(row['median'])} {ms(row['p95'])} {ms(row['max'])}")
    path = save("hook_to_rsync", {"files": args.files, "rounds": args.rounds, "runs": result})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
