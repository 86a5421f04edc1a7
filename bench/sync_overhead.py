"""No-change ``mirrorhook sync --if-changed`` against a plain rsync walk of the same tree.

This is what the marker saves every hour on a mirror that is already current: one small
rsync of the marker instead of a walk of every file. Both run against a real rsync daemon
on 127.0.0.1 serving a 10,000-file tree.

    .venv/bin/python -m bench.sync_overhead [--files 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import ms, save, summary
from mirrorhook import rsync as rsync_args
from mirrorhook.config import load_config
from tests.helpers import make_upstream, receiver_toml, rsync_daemon


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        upstream = make_upstream(tmp / "upstream", count=args.files)
        with rsync_daemon(tmp, upstream) as daemon:
            config = receiver_toml(tmp, upstream=daemon.url)
            receiver = load_config(config).receiver
            assert receiver is not None
            cli = [sys.executable, "-m", "mirrorhook", "sync", "-c", str(config)]
            subprocess.run(cli, check=True, capture_output=True)  # the first, full sync
            plain = rsync_args.tree_args(receiver)  # same flags, same source and target
            marker_only = [sys.executable, "-c", "pass"]  # interpreter start, for reference
            runs: dict[str, list[float]] = {"if_changed": [], "plain_rsync": [], "python": []}
            for _ in range(args.repeat):  # interleaved, so drift hits both alike
                runs["if_changed"].append(timed([*cli, "--if-changed"]))
                runs["plain_rsync"].append(timed(plain))
                runs["python"].append(timed(marker_only))
    result = {name: summary(samples) for name, samples in runs.items()}
    ratio = result["if_changed"]["median"] / result["plain_rsync"]["median"]
    print(f"no-change sync of a {args.files}-file tree over rsync://127.0.0.1, {args.repeat} runs")
    print(f"{'':32} {'median':>11} {'p25':>11} {'p75':>11}")
    for name, label in [
        ("if_changed", "mirrorhook sync --if-changed"),
        ("plain_rsync", "rsync walk, same flags"),
        ("python", "python -c pass (start-up)"),
    ]:
        row = result[name]
        print(f"{label:32} {ms(row['median'])} {ms(row['p25'])} {ms(row['p75'])}")
    print(f"ratio if-changed / plain walk: {ratio:.3f}")
    path = save("sync_overhead", {"files": args.files, "runs": result, "ratio": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
