"""Sync overhead: ``mirrorhook sync`` against plain rsync with the same flags.

1. A publish that changed 1% of a 10,000-file tree: ``mirrorhook sync`` (marker read,
   transfer, marker re-read, install) into one copy, plain rsync into another, after the
   same change — what mirrorhook's guarantees cost on top of rsync.
2. No change: ``mirrorhook sync --if-changed`` against a plain rsync walk — what the marker
   saves every hour on a mirror that is already current.

Both against a real rsync daemon on 127.0.0.1.

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
from tests.helpers import make_upstream, publish, receiver_toml, rsync_daemon


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
            copy = tmp / "plain-copy"
            plain_copy = [*plain[:-1], f"{copy}/"]
            subprocess.run(plain_copy, check=True, capture_output=True)
            marker_only = [sys.executable, "-c", "pass"]  # interpreter start, for reference
            runs: dict[str, list[float]] = {
                "changed_sync": [],
                "changed_plain": [],
                "if_changed": [],
                "plain_rsync": [],
                "python": [],
            }
            for number in range(args.repeat):  # interleaved, so drift hits both alike
                for index in range(number % 100, args.files, 100):  # 1% of the files
                    (upstream / f"dir{index % 4}" / f"file{index}.rpm").write_text(f"v{number}\n")
                publish(upstream, f"changed-{number}")
                runs["changed_sync"].append(timed(cli))
                runs["changed_plain"].append(timed(plain_copy))
                runs["if_changed"].append(timed([*cli, "--if-changed"]))
                runs["plain_rsync"].append(timed(plain))
                runs["python"].append(timed(marker_only))
    result = {name: summary(samples) for name, samples in runs.items()}
    ratio = result["if_changed"]["median"] / result["plain_rsync"]["median"]
    changed_ratio = result["changed_sync"]["median"] / result["changed_plain"]["median"]
    print(f"{args.files}-file tree over rsync://127.0.0.1, {args.repeat} runs each")
    print(f"{'':36} {'median':>11} {'p25':>11} {'p75':>11}")
    for name, label in [
        ("changed_sync", "1% changed: mirrorhook sync"),
        ("changed_plain", "1% changed: plain rsync"),
        ("if_changed", "no change: mirrorhook sync --if-changed"),
        ("plain_rsync", "no change: plain rsync walk"),
        ("python", "python -c pass (start-up)"),
    ]:
        row = result[name]
        print(f"{label:36} {ms(row['median'])} {ms(row['p25'])} {ms(row['p75'])}")
    print(f"ratio 1% changed, mirrorhook / plain: {changed_ratio:.3f}")
    print(f"ratio no change, if-changed / walk:   {ratio:.3f}")
    path = save(
        "sync_overhead",
        {"files": args.files, "runs": result, "ratio": ratio, "changed_ratio": changed_ratio},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
