"""Publish → a mirror's marker installed: a mirror following the event stream against one
taking webhooks, from the same publisher, for bench.subscriptions.

A real rsync daemon (``socket options = TCP_NODELAY``) serves a 100-file upstream; one
``mirrorhook serve`` publisher (a signing key) announces it to a webhook receiver (its
``[[mirrors]]`` entry has a URL and no secret: both receivers verify the same Ed25519
signature) and on its event stream, which a receiver with no port follows. Both have
backoff 0 and polling off. Each round changes 1% of the files, renames a new marker into
place and reads each mirror's marker every millisecond until it holds the new value.

Three modes, taken in turn round by round, so that whatever else the machine runs weighs on
each alike: ``together`` (one publish triggers both syncs, which then share the machine's
two cores), ``events alone`` and ``webhook alone`` (the other receiver paused with SIGSTOP
until the measured mirror has the marker; then it takes its announcement, and its sync is
waited for before the next round). From the
processes' logs each round's time is split at the receiver's steps: ``trigger`` (the
announcement verified and taken), ``sync started``, stage 1 (the upstream marker read),
stage 2 (the tree transferred) and ``sync finished``.
"""

from __future__ import annotations

import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench.end_to_end import stamp_of
from tests.helpers import (
    Processes,
    free_port,
    key_pair,
    make_upstream,
    marker_of,
    publish,
    receiver_toml,
    rsync_daemon,
    stop_processes,
    subscribing_receiver,
    trees_equal,
    wait_for_port,
    wait_until,
)
from tests.scene import json_toml

FILES = 100
SYNC_TIMEOUT = 60.0
MIRRORS = ("events", "webhook")
"""The two mirrors, named by what triggers them (as their log lines say)."""
STEPS = [
    ("triggered", r"trigger \({via} from .*marker '{v}'\)"),
    ("sync started", r"sync started \({via} from .*marker '{v}'\)"),
    ("upstream marker read", r"stage 1: transferring the tree for upstream marker '{v}'"),
    ("tree transferred", r"stage 2: installing marker '{v}'"),
    ("marker installed", r"sync finished .*marker '{v}' installed"),
]
"""A receiver's log lines in a sync, each stamped in ms (the last is logged after the
marker's rename into place, which the benchmark saw first)."""
NOTICED = r"marker '{v}': announcing"
MODES = {"together": MIRRORS, "events alone": ("events",), "webhook alone": ("webhook",)}
"""Which mirrors a round measures; the other is paused (SIGSTOP) until the round's end."""


def installed(trees: dict[str, Path], value: str, renamed: float) -> dict[str, float]:
    """Read each tree's marker every millisecond until all hold ``value``; the seconds
    from ``renamed`` to each one's arrival."""
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + SYNC_TIMEOUT
    while len(arrived) < len(trees):
        for name, tree in trees.items():
            if name not in arrived and marker_of(tree) == value:
                arrived[name] = time.time() - renamed
        assert time.monotonic() < deadline, f"marker {value} not installed in time"
        time.sleep(0.001)
    return arrived


def race(folder: Path, rounds: int) -> dict[str, Any]:
    """Run the three modes, ``rounds`` publishes each; every round's times."""
    folder.mkdir(parents=True)
    private, public = key_pair(folder / "keys", "upstream")
    upstream = make_upstream(folder / "upstream", marker="0", count=FILES)
    with rsync_daemon(folder, upstream) as daemon:
        processes = Processes(folder)
        hook_port, port = free_port(), free_port()
        (folder / "webhook").mkdir()
        hook = receiver_toml(
            folder / "webhook",
            upstream=daemon.url,
            port=hook_port,
            secret_file=None,
            public_key_file=str(public),
            backoff=0,
        )
        events = f"http://127.0.0.1:{port}/v1/events"
        subscribed = subscribing_receiver(
            folder / "events", daemon.url, public, [events], backoff=0
        )
        config = folder / "publisher.toml"
        settings = {
            "root": str(upstream),
            "state_dir": str(folder / "pstate"),
            "listen": [f"127.0.0.1:{port}"],
            "signing_key_file": str(private),
            "name": "upstream",
        }
        mirror = {"name": "webhook", "url": f"http://127.0.0.1:{hook_port}/v1/hook"}
        config.write_text(json_toml(settings, [mirror]))
        trees = {name: folder / name / "mirror" for name in MIRRORS}
        logs = {name: folder / f"{name}.log" for name in (*MIRRORS, "publisher")}
        done: dict[str, list[dict[str, Any]]] = {}
        try:
            running = {"webhook": processes.serve(hook, "webhook")}
            wait_for_port(hook_port)
            processes.serve(config, "publisher")
            wait_for_port(port)
            running["events"] = processes.serve(subscribed, "events")
            wait_until(lambda: all(marker_of(tree) == "0" for tree in trees.values()), "synced")
            wait_until(lambda: "subscribed to" in processes.log("events"), "subscribed")
            time.sleep(1.0)
            done = {mode: [] for mode in MODES}
            for number in range(1, 3 * rounds + 1):
                mode = list(MODES)[(number - 1) % len(MODES)]
                paused = [running[name] for name in MIRRORS if name not in MODES[mode]]
                for process in paused:
                    process.send_signal(signal.SIGSTOP)
                measured = {name: trees[name] for name in MODES[mode]}
                try:
                    done[mode].append(one_round(upstream, measured, number, logs))
                finally:
                    for process in paused:
                        process.send_signal(signal.SIGCONT)
                # The paused one takes its announcement now: let it finish before the next.
                installed(trees, str(number), time.time())
                time.sleep(0.3)
        finally:
            stop_processes(processes.running)
    return {"files": FILES, "rounds": rounds, "modes": done, "summary": summarize(done)}


def one_round(
    upstream: Path, trees: dict[str, Path], number: int, logs: dict[str, Path]
) -> dict[str, Any]:
    value = str(number)
    for index in range(number % 100, FILES, 100):  # 1% of the files
        (upstream / f"dir{index % 4}" / f"file{index}.rpm").write_text(f"publish {value}\n")
    renamed = time.time()
    publish(upstream, value)
    arrived = installed(trees, value, renamed)
    for tree in trees.values():
        assert trees_equal(upstream, tree), f"{tree} differs after publish {value}"
    time.sleep(0.3)  # the log lines of the round are written
    entry: dict[str, Any] = {"value": value, "installed": arrived}
    noticed = stamp_of(logs["publisher"], NOTICED.format(v=re.escape(value)))
    entry["noticed"] = None if noticed is None else noticed - renamed
    entry["steps"] = {}
    for name in trees:
        steps = entry["steps"][name] = {}
        for step, pattern in STEPS:
            at = stamp_of(logs[name], pattern.format(via=name, v=re.escape(value)))
            steps[step] = None if at is None else at - renamed
    time.sleep(0.2)
    return entry


def summarize(done: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per mode and mirror: medians of the time to each step and to the marker installed;
    the events/webhook ratio of the latter."""
    summary: dict[str, Any] = {}
    for mode, entries in done.items():
        row: dict[str, Any] = {}
        for name in MIRRORS:
            times = [entry["installed"][name] for entry in entries if name in entry["installed"]]
            if not times:
                continue
            steps = {}
            for step, _ in STEPS:
                stamps = [entry["steps"][name][step] for entry in entries]
                known = [stamp for stamp in stamps if stamp is not None]
                steps[step] = statistics.median(known) if known else None
            row[name] = {
                "installed_median": statistics.median(times),
                "installed_max": max(times),
                "steps_median": steps,
            }
        if len(row) == len(MIRRORS):
            row["ratio"] = row["events"]["installed_median"] / row["webhook"]["installed_median"]
        summary[mode] = row
    alone = summary.get("events alone", {}), summary.get("webhook alone", {})
    if "events" in alone[0] and "webhook" in alone[1]:
        summary["alone_ratio"] = (
            alone[0]["events"]["installed_median"] / alone[1]["webhook"]["installed_median"]
        )
    return summary


def print_race(result: dict[str, Any]) -> None:
    print(
        f"3. rename → a mirror's marker installed ({result['files']} files, backoff 0, "
        f"TCP_NODELAY both ends), {result['rounds']} rounds per mode, medians (ms)"
    )
    names = [step for step, _ in STEPS]
    print(f"  {'mode':14} {'mirror':8} {'installed':>9} {'max':>7}   log: " + " | ".join(names))
    for mode, row in result["summary"].items():
        if mode == "alone_ratio":
            continue
        for name in MIRRORS:
            if name in row:
                cell = row[name]
                steps = " | ".join(
                    "-" if at is None else f"{at * 1000:.1f}"
                    for at in cell["steps_median"].values()
                )
                print(
                    f"  {mode:14} {name:8} {cell['installed_median'] * 1000:9.1f} "
                    f"{cell['installed_max'] * 1000:7.1f}   {steps}"
                )
        if "ratio" in row:
            print(f"  {mode:14} events / webhook: {row['ratio']:.2f}")
    if "alone_ratio" in result["summary"]:
        ratio = result["summary"]["alone_ratio"]
        print(f"  {'each alone':14} events / webhook: {ratio:.2f}")
