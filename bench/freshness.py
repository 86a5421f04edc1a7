"""Freshness at the upstream: how soon it knows, what its checks cost, what it serves.

1. publish → fresh: a real rsync daemon upstream, a real ``mirrorhook serve`` publisher
   (with ``public_url``, so the mirror reports its syncs), a real receiver (backoff 0)
   whose tree a separate ``python -m http.server`` serves. Per publish: the rename → the
   mirror's tree has the new marker (its own sync), and the rename → the publisher's
   ``GET /v1/mirrors`` shows it ``fresh`` at the new value; reported is the difference.
2. a round of checks: a publisher with ``mirrors`` cron mirrors (a check_url each, no
   webhook), served by the fan-out's farm processes. At start-up every mirror is checked
   once; measured from the first check answered (the farms log each answer) to the last
   mirror's first check recorded (``last_check`` in the publisher's record, to the
   millisecond). With the shipped ``CHECK_CONCURRENCY`` and, for comparison, other bounds
   set by patching that constant in the publisher process only (``--bounds``).
3. the pages of that publisher (every mirror checked): ``GET /`` (measured once it answers
   200), ``GET /v1/mirrors`` and ``GET /mirrorlist``, ``requests`` times each, in a row.
4. deliveries with checks running: the fan-out (bench/fanout.py) to ``mirrors`` mirrors,
   without check_urls and then with them, checked every second (after each publish's
   5-s wait the checks run continuously); publishes 6 s apart so that each lands on them.

    .venv/bin/python -m bench.freshness [--quick] [--publishes 20] [--mirrors 1000]
        [--bounds 16 64] [--requests 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import fanout
from bench.stats import ms, save, summary
from mirrorhook import checker, signing
from tests.helpers import (
    free_port,
    make_upstream,
    marker_of,
    publish,
    rsync_daemon,
    stop_processes,
    wait_for_port,
    write_secret,
)

PYTHON = sys.executable
PAGES = {"page": "/", "mirrors": "/v1/mirrors", "mirrorlist": "/mirrorlist"}
CHECKED_EVERY = 1.0
"""check_interval in the deliveries-with-checks case: checks never stop."""
PUBLISH_SPACING = 4.95
"""Seconds between that case's publishes. A publish restarts every mirror's checks on the
after-publish schedule (first at 5 s), and with ``check_interval = 1`` they go on every
second after that; a publish 4.95 s after the previous one lands as that round starts."""
_PATCHED_SERVE = (
    "import sys, mirrorhook.checker as c; c.CHECK_CONCURRENCY = int(sys.argv.pop(1)); "
    "from mirrorhook.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def serve(config: Path, log: Path, check_concurrency: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``mirrorhook serve``; with ``check_concurrency``, that bound patched in first."""
    if check_concurrency is None or check_concurrency == checker.CHECK_CONCURRENCY:
        command = [PYTHON, "-m", "mirrorhook", "serve", "-c", str(config)]
    else:
        command = [PYTHON, "-c", _PATCHED_SERVE, str(check_concurrency), "serve", "-c", str(config)]
    with log.open("w") as sink:
        return subprocess.Popen(command, stderr=sink)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def one_mirror(
    folder: Path, upstream: str, tree: Path, ports: tuple[int, int, int]
) -> tuple[Path, Path]:
    """Configs of a receiver syncing ``tree`` from ``upstream`` and of a publisher telling it
    (``public_url`` set, so it reports), with the mirror's check_url on a static server."""
    hook, listen, web_port = ports
    secret = folder / "m.secret"
    write_secret(secret)
    receiver, publisher = folder / "receiver.toml", folder / "publisher.toml"
    receiver.write_text(
        "[receiver]\n"
        f'listen = ["127.0.0.1:{hook}"]\nsecret_file = "{secret}"\n'
        f'upstream = "{upstream}"\ntarget = "{tree}"\n'
        f'state_dir = "{folder / "rstate"}"\nbackoff = 0\npoll_interval = 0\n'
    )
    publisher.write_text(
        "[publisher]\n"
        f'root = "{folder / "upstream"}"\nstate_dir = "{folder / "pstate"}"\n'
        f'listen = ["127.0.0.1:{listen}"]\npublic_url = "http://127.0.0.1:{listen}"\n'
        "[[publisher.mirrors]]\n"
        f'name = "m"\nurl = "http://127.0.0.1:{hook}/v1/hook"\nsecret_file = "{secret}"\n'
        f'check_url = "http://127.0.0.1:{web_port}/CURRENT"\n'
    )
    return receiver, publisher


def publish_to_fresh(folder: Path, publishes: int) -> dict[str, Any]:
    """Goal 1: per publish, the mirror's own sync time and the publisher's time to fresh."""
    upstream = make_upstream(folder / "upstream", marker="0", count=100)
    tree = folder / "mirror"
    tree.mkdir()
    hook, listen, web_port = free_port(), free_port(), free_port()
    synced: list[float] = []
    fresh: list[float] = []
    lags: list[float] = []
    with rsync_daemon(folder / "daemon", upstream) as daemon:
        receiver, publisher = one_mirror(folder, daemon.url, tree, (hook, listen, web_port))
        processes: list[subprocess.Popen[bytes]] = []
        try:
            processes.append(
                subprocess.Popen(
                    [PYTHON, "-m", "http.server", str(web_port), "-b", "127.0.0.1"],
                    cwd=tree,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for_port(web_port)
            processes.append(serve(receiver, folder / "receiver.log"))
            wait_for_port(hook)
            processes.append(serve(publisher, folder / "publisher.log"))
            wait_for_port(listen)

            def row(value: str) -> dict[str, Any] | None:
                """The mirror's row when the publisher shows it fresh at ``value``."""
                document = json.loads(get(f"http://127.0.0.1:{listen}/v1/mirrors")[1])
                found: dict[str, Any] = document["mirrors"][0]
                at_value = document["newest"] == value and found["serving"] == value
                return found if at_value and found["state"] == "fresh" else None

            until(lambda: row("0"), "the mirror fresh at the first marker")
            for number in range(1, publishes + 1):
                time.sleep(0.3)
                value = str(number)
                changed = {
                    f"dir{index % 4}/file{index}.rpm": f"publish {value}\n"
                    for index in range(number, 100, 100)
                }
                renamed = time.time()
                publish(upstream, value, changed)
                sync_at = fresh_row = None
                asked = 0.0
                deadline = time.monotonic() + 30
                while sync_at is None or fresh_row is None:
                    assert time.monotonic() < deadline, f"publish {value} never seen fresh"
                    if sync_at is None and marker_of(tree) == value:
                        sync_at = time.time()
                    if fresh_row is None and time.monotonic() - asked >= 0.005:
                        asked = time.monotonic()
                        if (fresh_row := row(value)) is not None:
                            fresh.append(time.time() - renamed)
                    time.sleep(0.001)
                synced.append(sync_at - renamed)
                lags.append(float(fresh_row["lag"]))
            reports = (folder / "publisher.log").read_text().count("report from m: synced")
        finally:
            stop_processes(processes)
    beyond = [seen - own for seen, own in zip(fresh, synced, strict=True)]
    return {
        "publishes": publishes,
        "reports": reports,
        "synced": summary(synced),
        "fresh": summary(fresh),
        "beyond_sync": summary(beyond),
        "lag": summary(lags),
    }


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def check_round(
    folder: Path, mirrors: int, bound: int, requests: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Goal 2 (and 3 when ``requests``): the start-up round of checks of ``mirrors`` cron
    mirrors with ``bound`` checks at once; then the pages of that publisher."""
    root = folder / "repo"
    root.mkdir(parents=True)
    publish(root, "1")
    ports = fanout.listen_ports(mirrors)
    secrets = {port: signing.new_secret() for port in ports}
    listen = free_port()
    state = folder / "state"
    config = folder / "publisher.toml"
    lines = [
        "[publisher]",
        f'root = "{root}"',
        f'state_dir = "{state}"',
        'name = "bench"',
        f'listen = ["127.0.0.1:{listen}"]',
        *fanout.mirror_tables(folder, secrets, webhook=False, check=True),
    ]
    config.write_text("\n".join(lines) + "\n")
    farms = fanout.start_farms(folder, secrets, set(), serving="1")
    first: dict[str, tuple[float, str | None]] = {}
    try:
        started = time.time()
        farms.processes.append(serve(config, folder / "serve.log", bound))
        wait_for_port(listen, 30)
        listening = time.time()
        record = state / "freshness.json"
        deadline = time.monotonic() + 120
        while len(first) < mirrors:
            assert time.monotonic() < deadline, f"{mirrors - len(first)} mirrors never checked"
            time.sleep(0.02)
            entries = json.loads(record.read_text())["mirrors"] if record.exists() else {}
            for name, entry in entries.items():
                if name not in first and entry.get("last_check"):
                    first[name] = (_stamp(entry["last_check"]), entry.get("serving"))
        answered = farms.checked()
        pages = measure_pages(listen, farms, mirrors, requests) if requests else {}
    finally:
        farms.stop()
    began = min(at for _port, at in answered)
    done = max(at for at, _value in first.values())
    result = {
        "mirrors": mirrors,
        "bound": bound,
        "shipped_bound": bound == checker.CHECK_CONCURRENCY,
        "checking_seconds": done - began,
        "start_to_all_seconds": done - started,
        "listening_to_all_seconds": done - listening,
        "start_to_first_check_seconds": began - started,
        "not_serving_the_marker": sum(1 for _at, value in first.values() if value != "1"),
    }
    return result, pages


def measure_pages(listen: int, farms: fanout.Farms, mirrors: int, requests: int) -> dict[str, Any]:
    """Goal 3: each page ``requests`` times in a row, once the checks have settled."""
    # The start-up announce schedules a second round about 5 s later: let it pass first.
    until(lambda: len(farms.checked()) >= 2 * mirrors, "the round after the start-up announce")
    time.sleep(1)
    base = f"http://127.0.0.1:{listen}"
    results: dict[str, Any] = {}
    for name, path in PAGES.items():
        status, body = get(base + path)
        if status != 200:
            results[name] = {"path": path, "status": status}
            continue
        if name == "mirrors":
            rows = json.loads(body)["mirrors"]
            assert len(rows) == mirrors, len(rows)
            assert all(row["state"] == "fresh" for row in rows), "not every mirror is fresh"
        if name == "mirrorlist":
            assert len(body.decode().splitlines()) == mirrors + 1, "not every mirror listed"
        samples = []
        for _ in range(requests):
            began = time.perf_counter()
            status, body = get(base + path)
            samples.append(time.perf_counter() - began)
            assert status == 200, f"{path}: {status}"
        results[name] = {"path": path, "status": 200, "bytes": len(body), **summary(samples)}
    return results


def deliveries(folder: Path, mirrors: int, rounds: int) -> dict[str, Any]:
    """Goal 4: the fan-out without check_urls, then with them checked continuously."""
    cases = {}
    for label, interval in (("without checks", None), ("with checks", CHECKED_EVERY)):
        case = fanout.run_case(
            folder, mirrors, 0, rounds, 64, check_interval=interval, pause=PUBLISH_SPACING
        )
        cases[label] = {"checks_during": case.checks_during, **summary(case.samples)}
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer of everything (~1 min)")
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--mirrors", type=int, default=1000)
    parser.add_argument("--bounds", type=int, nargs="+", default=[checker.CHECK_CONCURRENCY, 64])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.publishes, args.mirrors, args.requests, args.rounds = 5, 200, 50, 2
        args.bounds = args.bounds[:1]
    with tempfile.TemporaryDirectory(prefix="mirrorhook-freshness-") as folder:
        tmp = Path(folder)
        print("1. publish -> fresh at the upstream ...", flush=True)
        fresh = publish_to_fresh(tmp / "fresh", args.publishes)
        rounds: list[dict[str, Any]] = []
        pages: dict[str, Any] = {}
        for index, bound in enumerate(args.bounds):
            print(f"2. a round of {args.mirrors} checks, {bound} at once ...", flush=True)
            result, measured = check_round(
                tmp / f"round-{bound}", args.mirrors, bound, args.requests if index == 0 else 0
            )
            rounds.append(result)
            pages = pages or measured
        print(f"4. deliveries to {args.mirrors} mirrors, with and without checks ...", flush=True)
        fan = deliveries(tmp / "fanout", args.mirrors, args.rounds)
    report(args, fresh, rounds, pages, fan)
    document = {
        "publish_to_fresh": fresh,
        "check_rounds": rounds,
        "pages": pages,
        "deliveries": {"mirrors": args.mirrors, "publish_spacing_s": PUBLISH_SPACING, **fan},
    }
    print(f"wrote {save('freshness', document)}")
    return 0


def report(
    args: argparse.Namespace,
    fresh: dict[str, Any],
    rounds: list[dict[str, Any]],
    pages: dict[str, Any],
    fan: dict[str, Any],
) -> None:
    beyond, own, seen, lag = (fresh[k] for k in ("beyond_sync", "synced", "fresh", "lag"))
    print(f"1. publish -> fresh, {args.publishes} publishes ({fresh['reports']} reports)")
    print(f"   {'':28} {'p50':>11} {'p95':>11} {'max':>11}")
    for name, row in (
        ("rename -> mirror synced", own),
        ("rename -> /v1/mirrors fresh", seen),
        ("fresh beyond own sync", beyond),
        ("recorded lag", lag),
    ):
        print(f"   {name:28} {ms(row['median'])} {ms(row['p95'])} {ms(row['max'])}")
    print("   goal: p50 of (fresh - synced) <= 300 ms")
    print(f"2. a round of checks of {args.mirrors} cron mirrors at start-up (goal <= 3 s)")
    for row in rounds:
        label = "shipped" if row["shipped_bound"] else "patched"
        print(
            f"   bound {row['bound']:>3} ({label}): first check -> all recorded"
            f" {row['checking_seconds']:6.2f} s; process start -> all"
            f" {row['start_to_all_seconds']:6.2f} s; port ready -> all"
            f" {row['listening_to_all_seconds']:6.2f} s; not serving the marker:"
            f" {row['not_serving_the_marker']}"
        )
    print(f"3. pages for {args.mirrors} mirrors, {args.requests} requests each (goal / <= 50 ms)")
    for row in pages.values():
        if row["status"] != 200:
            print(f"   GET {row['path']:12} answers {row['status']}: not measured")
            continue
        print(
            f"   GET {row['path']:12} p50 {ms(row['median'])}  p95 {ms(row['p95'])}"
            f"  ({row['bytes']:,} bytes)"
        )
    print(
        f"4. rename -> last 2xx, {args.mirrors} mirrors, {args.rounds} publishes"
        f" {PUBLISH_SPACING:g} s apart (goal: no slower with checks)"
    )
    for name, row in fan.items():
        print(
            f"   {name:16} median {ms(row['median'])}  max {ms(row['max'])}"
            f"  checks answered during the deliveries: {row['checks_during']}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
