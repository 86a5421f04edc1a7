"""Many repositories in one daemon: 50 trees from one rsync daemon, one ``mirrorhook serve``.

A wrapper around the real rsync logs when each run starts and ends (and which repository
it serves), so that the benchmark can see the concurrency the daemon allows. Measured:

1. RSS once every tree is synced, and the daemon's CPU over an idle minute with polls on
   (``poll_interval`` 60 s + 0..30 s jitter, so each repository polls about once);
2. webhook → first rsync exec for a repository (its marker read), one repository at a
   time, ``rounds`` times;
3. a burst: every repository published at once and told by webhook, ``max_syncs`` 4: the
   time until every tree has its new marker, against the ideal (50 / 4 syncs in a row of
   the median sync's duration), and the most rsync syncs running at once.

    .venv/bin/python -m bench.many_repos [--repos 50] [--rounds 20] [--idle 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.capacity import rss_mb
from bench.stats import ms, save, summary
from mirrorhook.signing import Secret
from tests.helpers import (
    free_port,
    make_upstream,
    marker_of,
    publish,
    real_rsync,
    rsync_daemon,
    signed_webhook,
    wait_for_port,
    write_secret,
)

MAX_SYNCS = 4


def wrapper(folder: Path, log: Path) -> Path:
    """A real rsync behind a shell wrapper that logs start and end of every run."""
    path = folder / "logging-rsync"
    path.write_text(
        "#!/bin/sh\n"
        f'echo "start $(date +%s.%N) $*" >> {log}\n'
        f'{real_rsync()} "$@"; code=$?\n'
        f'echo "end $(date +%s.%N) $*" >> {log}\n'
        "exit $code\n"
    )
    path.chmod(0o755)
    return path


def repo_of(args: str, names: list[str]) -> str:
    return next(name for name in names if f"/{name}/" in args)


def runs(log: Path, names: list[str]) -> list[tuple[float, float, str, bool]]:
    """(start, end, repository, is a tree transfer) of every finished rsync run."""
    started: dict[tuple[str, str], float] = {}
    done = []
    for line in log.read_text().splitlines():
        kind, stamp, args = line.split(" ", 2)
        key = (repo_of(args, names), args)
        if kind == "start":
            started[key] = float(stamp)
        elif key in started:
            done.append((started.pop(key), float(stamp), key[0], "--delay-updates" in args))
    return sorted(done)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of the daemon, and of the children it waited for (its rsync runs, here
    each with the logging wrapper's shell, date and echo)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime (fields 14-17 of proc(5)), in clock ticks
    ticks = [int(fields[index]) for index in (11, 12, 13, 14)]
    return (ticks[0] + ticks[1]) / 100, (ticks[2] + ticks[3]) / 100


def post(port: int, name: str, secret: Secret, value: str) -> None:
    body, headers = signed_webhook(secret, value)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/hook/{name}", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status


def until(condition: object, what: str, timeout: float = 300) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def main() -> int:  # noqa: PLR0915 - one linear story, like the end-to-end tests
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    names = [f"r{index:02d}" for index in range(args.repos)]
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as folder:
        tmp = Path(folder)
        roots = {name: make_upstream(tmp / "up" / name, count=20) for name in names}
        log = tmp / "rsync.log"
        with rsync_daemon(tmp, tmp / "up") as daemon:
            port = free_port()
            secrets = {name: Secret.parse(write_secret(tmp / f"{name}.secret")) for name in names}
            lines = [
                "[receiver]",
                f'listen = ["127.0.0.1:{port}"]',
                f'state_dir = "{tmp / "state"}"',
                f"max_syncs = {MAX_SYNCS}",
                "backoff = 0",
                "poll_interval = 60",
                "poll_jitter = 30",
                f'rsync = "{wrapper(tmp, log)}"',
            ]
            for name in names:
                lines += [
                    f"[receiver.repos.{name}]",
                    f'secret_file = "{tmp / f"{name}.secret"}"',
                    f'upstream = "{daemon.url}{name}/"',
                    f'target = "{tmp / "srv" / name}"',
                ]
            config = tmp / "host.toml"
            config.write_text("\n".join(lines) + "\n")
            with (tmp / "serve.log").open("w") as sink:
                serve = subprocess.Popen(
                    [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)],
                    stderr=sink,
                )
            try:
                wait_for_port(port)
                until(
                    lambda: all(marker_of(tmp / "srv" / name) == "1" for name in names),
                    "the start-up syncs",
                )
                time.sleep(2)
                rss = rss_mb(serve.pid)
                before, start = cpu_seconds(serve.pid), time.monotonic()
                time.sleep(args.idle)
                after, elapsed = cpu_seconds(serve.pid), time.monotonic() - start
                idle_cpu = (after[0] - before[0]) / elapsed
                idle_children = (after[1] - before[1]) / elapsed

                to_rsync = []
                for number in range(args.rounds):
                    name = names[number % len(names)]
                    value = f"w{number}"
                    publish(roots[name], value)
                    lines_before = len(log.read_text().splitlines())
                    sent = time.time()
                    post(port, name, secrets[name], value)
                    until(lambda n=name, v=value: marker_of(tmp / "srv" / n) == v, "a sync")
                    new = log.read_text().splitlines()[lines_before:]
                    first = next(
                        float(line.split(" ", 2)[1])
                        for line in new
                        if line.startswith("start") and f"/{name}/" in line
                    )
                    to_rsync.append(first - sent)

                for name in names:
                    publish(roots[name], "burst")
                burst_from = len(log.read_text().splitlines())
                sent = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda n: post(port, n, secrets[n], "burst"), names))
                until(
                    lambda: all(marker_of(tmp / "srv" / n) == "burst" for n in names),
                    "the burst",
                )
                burst = time.monotonic() - sent
            finally:
                serve.terminate()
                serve.wait(60)
            burst_log = tmp / "burst.log"
            burst_log.write_text("\n".join(log.read_text().splitlines()[burst_from:]) + "\n")
            finished = runs(burst_log, names)
            by_repo: dict[str, list[tuple[float, float, str, bool]]] = {}
            for run in finished:
                by_repo.setdefault(run[2], []).append(run)
            # A sync is its marker read, its tree transfer and its marker re-read (a poll
            # that followed it, finding nothing to do, is not part of it).
            spans = []
            for repo_runs in by_repo.values():
                tree = next(i for i, run in enumerate(repo_runs) if run[3])
                assert 0 < tree < len(repo_runs) - 1, "a sync is marker, tree, marker"
                spans.append((repo_runs[tree - 1][0], repo_runs[tree + 1][1]))
            durations = sorted(end - start for start, end in spans)
            one_sync = durations[len(durations) // 2]
            ideal = len(names) / MAX_SYNCS * one_sync
            peak = most_at_once([(run[0], run[1]) for run in finished])
            peak_syncs = most_at_once(spans)
            assert peak <= MAX_SYNCS, f"{peak} rsync runs at once"
            states = [
                json.loads((tmp / "state" / "repos" / n / "receiver.json").read_text())
                for n in names
            ]
            assert all(s["last_sync"]["result"] in ("synced", "up-to-date") for s in states)
    hook = summary(to_rsync)
    result = {
        "repos": len(names),
        "max_syncs": MAX_SYNCS,
        "rss_mb": rss,
        "idle_cpu_share": idle_cpu,
        "idle_children_cpu_share": idle_children,
        "idle_seconds": args.idle,
        "webhook_to_rsync": hook,
        "burst_seconds": burst,
        "one_sync_seconds": one_sync,
        "burst_ideal_seconds": ideal,
        "burst_ratio": burst / ideal,
        "most_rsyncs_at_once": peak,
        "most_syncs_at_once": peak_syncs,
    }
    print(f"{len(names)} repositories in one serve, max_syncs = {MAX_SYNCS}")
    print(f"  RSS after the start-up syncs      {rss:8.1f} MB   (goal <= 100 MB)")
    print(f"  idle CPU over {args.idle:.0f} s, polls on   {idle_cpu * 100:8.2f} %    (goal <= 1 %)")
    print(f"  ... its rsync runs (and wrapper)  {idle_children * 100:8.2f} %")
    print(
        f"  webhook -> rsync exec p50      {ms(hook['median'])}   p95 {ms(hook['p95'])}"
        "   (goal p50 <= 20 ms)"
    )
    print(
        f"  burst of {len(names)}: {burst:.2f} s, ideal {ideal:.2f} s ({len(names)}/{MAX_SYNCS} x"
        f" {one_sync * 1000:.0f} ms), ratio {burst / ideal:.2f} (goal <= 1.3)"
    )
    print(f"  most rsync runs at once        {peak:8d}      (goal <= {MAX_SYNCS})")
    print(f"  most syncs at once             {peak_syncs:8d}      (marker read to re-read)")
    print(f"wrote {save('many_repos', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
