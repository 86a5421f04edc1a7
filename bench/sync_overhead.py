"""Sync overhead: ``mirrorhook sync`` against plain rsync with the same flags.

1. A publish that changed 1% of a 10,000-file tree: ``mirrorhook sync`` (marker read,
   transfer, marker re-read, install) into one copy, plain rsync into another, after the
   same change — what mirrorhook's guarantees cost on top of rsync.
2. The same change synced by a running ``mirrorhook serve`` after a webhook (no Python
   start-up): the sync's own duration, from its record, against the plain rsync; and by a
   second one whose webhook carries the change inline, as a publisher that keeps
   manifests sends it (the sync by change of docs/design.md#the-delta-transfer).
3. No change: ``mirrorhook sync --if-changed`` against a plain rsync walk — what the marker
   saves every hour on a mirror that is already current.
4. The floor under all three: an interpreter that imports only the standard library a
   sync needs (asyncio, argparse, tomllib, dataclasses, logging, pathlib), and one rsync
   of the marker alone; from them, the ratio each goal would have with none of
   mirrorhook's own code (two marker reads and the interpreter for ``mirrorhook sync``,
   two reads for the daemon, one read and the interpreter for ``--if-changed``).

All against a real rsync daemon on 127.0.0.1 that sets ``socket options = TCP_NODELAY``
(contrib/rsyncd.conf); plain rsync gets mirrorhook's flags, ``--sockopts`` included.

    .venv/bin/python -m bench.sync_overhead [--files 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mirrorhook
from bench.stats import ms, save, summary
from mirrorhook import message, signing
from mirrorhook import rsync as rsync_args
from mirrorhook.changes import Change, diff
from mirrorhook.config import load_config
from mirrorhook.manifest import walk
from mirrorhook.signing import Secret
from mirrorhook.state import read_json
from tests.helpers import (
    free_port,
    make_upstream,
    marker_of,
    publish,
    receiver_toml,
    rsync_daemon,
    signed_webhook,
    wait_for_port,
)

STDLIB = ("asyncio", "argparse", "tomllib", "dataclasses", "logging", "pathlib")
"""What a sync imports of the standard library (``python -X importtime``)."""


def daemon_sync(
    port: int,
    secret: Secret | None,
    value: str,
    state: Path,
    mirror: Path,
    *,
    change: Change | None = None,
) -> float:
    """Send the daemon a webhook for ``value`` (carrying ``change`` inline, as a publisher
    that keeps manifests sends it); return its sync's recorded duration."""
    body, headers = signed_webhook(secret, value)
    if change is not None:
        assert secret is not None
        update = dataclasses.replace(message.decode(body), changes=json.loads(change.encode()))
        body = update.encode()
        now = int(time.time())
        headers = signing.signed_headers(secret, f"msg_{value}", now, body)
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/hook", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    deadline = time.monotonic() + 120
    while marker_of(mirror) != value:
        assert time.monotonic() < deadline, "the daemon's sync did not finish"
        time.sleep(0.005)
    while (last := read_json(state).get("last_sync", {})).get("marker") != value:
        assert time.monotonic() < deadline, "the daemon's sync was not recorded"
        time.sleep(0.005)
    return float(last["duration"])


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(files: int, repeat: int) -> dict[str, list[float]]:
    """Run every variant ``repeat`` times, interleaved; return the samples per variant."""
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        upstream = make_upstream(tmp / "upstream", count=files)
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
            bare_python = [sys.executable, "-c", "pass"]  # interpreter start, for reference
            stdlib = [sys.executable, "-c", f"import {', '.join(STDLIB)}"]
            one_read = rsync_args.marker_args(receiver, tmp / "marker-copy")
            served, by_change = tmp / "served", tmp / "by-change"
            port, delta_port = int(receiver.listen[0].port or 0), free_port()
            serving = []
            for place, listen in ((served, port), (by_change, delta_port)):
                place.mkdir()
                served_config = receiver_toml(
                    place,
                    upstream=daemon.url,
                    port=listen,
                    secret_file=str(receiver.secret_file),
                    target=str(place / "mirror"),
                    state_dir=str(place / "state"),
                )
                with (place / "serve.log").open("w") as log:
                    serving.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "mirrorhook", "serve", "-c", str(served_config)],
                            stderr=log,
                        )
                    )
                wait_for_port(listen)
            manifest = walk(upstream, marker=marker_of(upstream) or "")
            runs: dict[str, list[float]] = {
                "changed_sync": [],
                "changed_daemon": [],
                "changed_by_change": [],
                "changed_plain": [],
                "if_changed": [],
                "plain_rsync": [],
                "python": [],
                "stdlib": [],
                "marker_read": [],
            }
            try:
                deadline = time.monotonic() + 300
                for place in (served, by_change):  # their start-up syncs
                    while marker_of(place / "mirror") != marker_of(upstream):
                        assert time.monotonic() < deadline, "a daemon's first sync did not finish"
                        time.sleep(0.05)
                for number in range(repeat):  # interleaved, so drift hits all alike
                    for index in range(number % 100, files, 100):  # 1% of the files
                        (upstream / f"dir{index % 4}" / f"file{index}.rpm").write_text(
                            f"v{number}\n"
                        )
                    value = f"changed-{number}"
                    publish(upstream, value)
                    new = walk(upstream, manifest, marker=value)  # as a publisher does
                    change, manifest = diff(manifest, new), new
                    runs["changed_sync"].append(timed(cli))
                    runs["changed_daemon"].append(
                        daemon_sync(
                            port,
                            receiver.secret,
                            value,
                            served / "state/receiver.json",
                            served / "mirror",
                        )
                    )
                    runs["changed_by_change"].append(
                        daemon_sync(
                            delta_port,
                            receiver.secret,
                            value,
                            by_change / "state/receiver.json",
                            by_change / "mirror",
                            change=change,
                        )
                    )
                    runs["changed_plain"].append(timed(plain_copy))
                    runs["if_changed"].append(timed([*cli, "--if-changed"]))
                    runs["plain_rsync"].append(timed(plain))
                    runs["python"].append(timed(bare_python))
                    runs["stdlib"].append(timed(stdlib))
                    runs["marker_read"].append(timed(one_read))
            finally:
                for serve in serving:
                    serve.terminate()
                    serve.wait(30)
    return runs


def floors(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """The ratio each goal would have if mirrorhook's own code cost nothing: what the
    interpreter with the standard library and the marker reads that the guarantees need
    (docs/design.md#the-two-stage-sync) add to plain rsync."""
    stdlib, read = result["stdlib"]["median"], result["marker_read"]["median"]
    plain, walk = result["changed_plain"]["median"], result["plain_rsync"]["median"]
    return {
        "sync": (stdlib + 2 * read + plain) / plain,
        "daemon": (2 * read + plain) / plain,
        "if_changed": (stdlib + read) / walk,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    # The bytecode an installed package has (pip compiles it at install): without it, each
    # run would compile mirrorhook from source, some 100 ms here, where the environment
    # sets PYTHONDONTWRITEBYTECODE (as this project's CI machines do).
    compileall.compile_dir(Path(mirrorhook.__file__).parent, quiet=1)
    runs = measure(args.files, args.repeat)
    result = {name: summary(samples) for name, samples in runs.items()}
    ratio = result["if_changed"]["median"] / result["plain_rsync"]["median"]
    changed_ratio = result["changed_sync"]["median"] / result["changed_plain"]["median"]
    daemon_ratio = result["changed_daemon"]["median"] / result["changed_plain"]["median"]
    delta_ratio = result["changed_by_change"]["median"] / result["changed_plain"]["median"]
    print(f"{args.files}-file tree over rsync://127.0.0.1, {args.repeat} runs each")
    print(f"{'':36} {'median':>11} {'p25':>11} {'p75':>11}")
    for name, label in [
        ("changed_sync", "1% changed: mirrorhook sync"),
        ("changed_daemon", "1% changed: serve, webhook-triggered"),
        ("changed_by_change", "1% changed: serve, by the change"),
        ("changed_plain", "1% changed: plain rsync"),
        ("if_changed", "no change: mirrorhook sync --if-changed"),
        ("plain_rsync", "no change: plain rsync walk"),
        ("python", "python -c pass (start-up)"),
        ("stdlib", "python importing a sync's stdlib"),
        ("marker_read", "one rsync of the marker alone"),
    ]:
        row = result[name]
        print(f"{label:36} {ms(row['median'])} {ms(row['p25'])} {ms(row['p75'])}")
    print(f"ratio 1% changed, mirrorhook / plain: {changed_ratio:.3f}")
    print(f"ratio 1% changed, daemon / plain:     {daemon_ratio:.3f}")
    print(f"ratio 1% changed, by change / plain:  {delta_ratio:.3f}")
    print(f"ratio no change, if-changed / walk:   {ratio:.3f}")
    floor = floors(result)
    print(
        "floors (no mirrorhook code): sync {sync:.3f}, daemon {daemon:.3f}, "
        "if-changed {if_changed:.3f}".format(**floor)
    )
    path = save(
        "sync_overhead",
        {
            "files": args.files,
            "runs": result,
            "ratio": ratio,
            "changed_ratio": changed_ratio,
            "daemon_ratio": daemon_ratio,
            "delta_ratio": delta_ratio,
            "floors": floor,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
