"""Subscriptions: 10,000 subscribers on one publisher's event stream, the same through one
Mosquitto, and a subscribed mirror against a webhook one.

1. A real ``mirrorhook serve`` publisher (single form, a signing key, no mirrors,
   ``max_subscribers = 10000``) and ``--subscribers`` event streams opened over ``--ramp``
   seconds by ``--processes`` subscriber processes (bench/subscribers.py, plain asyncio).
   Each round renames a new marker into place and waits until every subscriber holds the
   announcement of it; the time is each subscriber's arrival minus the rename (wall clock,
   one machine). The publisher's VmRSS and VmHWM are read with all connected. Then the
   publisher is stopped (SIGTERM) and started again on the same port; the subscribers
   reconnect on their own, with the follower's backoff and ``Last-Event-ID``: the time is
   from the SIGTERM until every one has reconnected and received an announcement since.
   A probe process GETs ``/healthz`` every 50 ms throughout, each on a new connection.
   Where the time goes: the CPU seconds of the publisher, of the subscribers and of the
   whole machine in each round; the publisher's full garbage collections (bench/gc_log,
   ``--publisher-gc off`` disables them); the kernel's ListenOverflows (SYNs dropped for a
   full accept queue, each retried after 1 s). ``--reconnect-spread S`` has the subscribers
   reconnect over S seconds instead of the follower's 0.5-1 s.
2. The same subscribers through one Mosquitto (tests/brokers.py, on loopback): the
   publisher announces with ``[publisher.mqtt]``; the subscribers are minimal MQTT 3.1.1
   clients subscribed with QoS 1 to ``mirrorhook/upstream/upstream``.
3. bench/subscribed_mirror.py: publish → a mirror's marker installed, for a real receiver
   following the event stream and one taking webhooks from the same publisher.

Bounded: every wait has a deadline (``CONNECT_TIMEOUT``, ``ROUND_TIMEOUT``,
``RESTART_TIMEOUT``), every process is stopped at the end of its part.

    .venv/bin/python -m bench.subscriptions [--subscribers 10000] [--processes 4]
        [--rounds 5] [--mirror-rounds 15] [--publisher-gc on|off] [--reconnect-spread S]
        [--skip-events] [--skip-restart] [--skip-mqtt] [--skip-mirrors]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.capacity import TICKS, cpu_seconds
from bench.slow_clients import listen_overflows
from bench.stats import save
from bench.subscribed_mirror import print_race, race
from bench.subscriber_tally import Key, Probe, Subscribers, Tally, spread, start_subscribers
from tests.brokers import Mosquitto
from tests.helpers import (
    MIRRORHOOK,
    free_port,
    key_pair,
    make_upstream,
    publish,
    stop_processes,
    wait_for_port,
)
from tests.scene import json_toml

PUBLISHER = "upstream"
TOPIC = f"mirrorhook/{PUBLISHER}/{PUBLISHER}"
"""The single form's topic: ``mirrorhook/{publisher}/{repo}``, the repository named after
the publisher."""
ROUND_TIMEOUT = 60.0
CONNECT_TIMEOUT = 180.0
RESTART_TIMEOUT = 120.0
GC_LOG = Path(__file__).resolve().parent / "gc_log"
"""A ``sitecustomize`` that logs the publisher's full garbage collections."""


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (every core, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


class Publisher:
    """A ``mirrorhook serve`` publisher process, logging to ``log``; its full garbage
    collections are logged to ``log.gc`` (bench/gc_log)."""

    def __init__(self, config: Path, log: Path, port: int, *, gc: str = "on") -> None:
        self.config, self.log, self.port, self.gc = config, log, port, gc
        self.gc_log = log.with_suffix(".gc")
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        paths = [str(GC_LOG), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        env["MIRRORHOOK_BENCH_GC_LOG"] = str(self.gc_log)
        env["MIRRORHOOK_BENCH_GC"] = self.gc
        command = [*MIRRORHOOK, "serve", "-c", str(self.config)]
        with self.log.open("ab") as log:
            process = subprocess.Popen(command, stderr=log, env=env)
        wait_for_port(self.port, timeout=30)
        return process

    def pauses(self, start: float, end: float) -> list[float]:
        """The full collections begun in [start, end): each one's seconds."""
        found = []
        for line in self.gc_log.read_text().splitlines() if self.gc_log.exists() else []:
            began, took, _ = line.split()
            if start <= float(began) < end:
                found.append(float(took))
        return found

    def memory(self) -> dict[str, float]:
        return memory_mb(self.process.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def restart(self) -> dict[str, float]:
        """SIGTERM, wait for the exit, start again: the moments (wall clock) of each."""
        stopped = time.time()
        self.process.terminate()
        self.process.wait(60)
        exited = time.time()
        self.process = self._start()
        return {"stopped": stopped, "exited": exited, "listening": time.time()}

    def stop(self) -> None:
        stop_processes([self.process])


def publisher_config(folder: Path, root: Path, port: int, max_subscribers: int, extra: str) -> Path:
    private, _ = key_pair(folder / "keys", PUBLISHER)
    config = folder / "publisher.toml"
    settings = {
        "root": str(root),
        "state_dir": str(folder / "pstate"),
        "listen": [f"127.0.0.1:{port}"],
        "signing_key_file": str(private),
        "name": PUBLISHER,
        "max_subscribers": max_subscribers,
    }
    config.write_text(json_toml(settings, []) + extra)
    return config


def connect_all(subscribers: Subscribers) -> float:
    """Wait until every subscriber is subscribed and holds the first marker's announcement;
    the seconds it took."""
    began = time.time()
    tally, count = subscribers.tally, subscribers.count
    done = tally.wait(
        everyone_holds(tally, "0", count),
        f"{count} subscribers connected",
        CONNECT_TIMEOUT,
    )
    return done - began


def everyone_holds(tally: Tally, value: str, count: int) -> Callable[[], bool]:
    return lambda: len(tally.heard.get(value, {})) >= count


def rounds(
    root: Path,
    subscribers: Subscribers,
    publisher: Publisher,
    servers: dict[str, int],
    count: int,
) -> list[dict[str, Any]]:
    """``count`` publishes, each waited for at every subscriber; the CPU time of each of
    ``servers`` (name: pid), of the subscribers and of the machine until the last arrival."""
    done = []
    tally = subscribers.tally
    for number in range(1, count + 1):
        value = str(number)
        cpu = {name: cpu_seconds(pid) for name, pid in servers.items()}
        theirs, machine = subscribers.cpu(), machine_cpu()
        renamed = time.time()
        publish(root, value)
        tally.wait(
            everyone_holds(tally, value, subscribers.count),
            f"marker {value} at every subscriber",
            ROUND_TIMEOUT,
        )
        latencies = [at - renamed for at in tally.heard[value].values()]
        busy: dict[str, Any] = {
            **{f"{name}_cpu_s": cpu_seconds(pid) - cpu[name] for name, pid in servers.items()},
            "subscribers_cpu_s": subscribers.cpu() - theirs,
            "machine_cpu_s": machine_cpu() - machine,
            "wall_s": time.time() - renamed,
        }
        busy["publisher_gc_pauses_s"] = publisher.pauses(renamed, renamed + busy["wall_s"])
        time.sleep(1.0)
        done.append(
            {
                "value": value,
                "renamed": renamed,
                "latency": spread(latencies),
                **busy,
            }
        )
    return done


def restart(publisher: Publisher, subscribers: Subscribers) -> dict[str, Any]:
    """Restart the publisher; wait until each subscriber has reconnected and received an
    announcement on its new connection."""
    tally = subscribers.tally
    tally.read()
    before = {key: max(connections) for key, connections in tally.connected.items()}
    assert len(before) == subscribers.count, "not every subscriber is connected"
    overflows = listen_overflows()
    moments = publisher.restart()

    def again(key: Key) -> float | None:
        later = [at for number, at in tally.heard_on.get(key, {}).items() if number > before[key]]
        return min(later) if later else None

    def everyone() -> bool:
        return all(again(key) is not None for key in before)

    done = tally.wait(everyone, "every subscriber back", RESTART_TIMEOUT)
    overflows = listen_overflows() - overflows
    stopped = moments["stopped"]
    reconnected = [
        min(at for number, at in tally.connected[key].items() if number > before[key]) - stopped
        for key in before
    ]
    heard = [(again(key) or 0.0) - stopped for key in before]
    return {
        "moments": moments,
        "exit_s": moments["exited"] - stopped,
        "listening_s": moments["listening"] - stopped,
        "all_back_s": max(heard),
        "seen_by_bench_s": done - stopped,
        "reconnected": spread(reconnected, within=30),
        "announced_again": spread(heard, within=30),
        "attempts_failed": sum(tally.failures.values()),
        "listen_overflows": overflows,
    }


def run_events(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the publisher's own event stream."""
    folder.mkdir(parents=True)
    root = make_upstream(folder / "upstream", marker="0", count=10)
    port = free_port()
    config = publisher_config(folder, root, port, max(10_000, args.subscribers), "")
    publisher = Publisher(config, folder / "publisher.log", port, gc=args.publisher_gc)
    probe = Probe.start(folder, port)
    subscribers = start_subscribers(
        folder,
        "events",
        f"http://127.0.0.1:{port}/v1/events",
        count=args.subscribers,
        processes=args.processes,
        ramp=args.ramp,
        spread=args.reconnect_spread,
    )
    result: dict[str, Any] = {
        "subscribers": args.subscribers,
        "processes": args.processes,
        "publisher_gc": args.publisher_gc,
        "reconnect_spread_s": args.reconnect_spread,
    }
    try:
        time.sleep(0.5)
        result["memory_idle_mb"] = publisher.memory()
        began = time.time()
        cpu = publisher.cpu()
        result["connect_s"] = connect_all(subscribers)
        time.sleep(2.0)
        result["connect_cpu_s"] = publisher.cpu() - cpu
        result["memory_connected_mb"] = publisher.memory()
        connected = time.time()
        result["probe_connecting"] = probe.between(began, connected)
        result["gc_pauses_connecting_s"] = publisher.pauses(began, connected)
        servers = {"publisher": publisher.process.pid}
        result["rounds"] = rounds(root, subscribers, publisher, servers, args.rounds)
        result["memory_after_rounds_mb"] = publisher.memory()
        result["latency"] = pooled(result["rounds"], subscribers)
        after_rounds = time.time()
        result["probe_rounds"] = probe.between(connected, after_rounds)
        if not args.skip_restart:
            back = restart(publisher, subscribers)
            time.sleep(1.0)
            stopped, listening = back["moments"]["stopped"], back["moments"]["listening"]
            answered = [at for at, seconds, _ in probe.answers() if seconds and at >= listening]
            up = min(answered) if answered else listening
            back["probe_down"] = probe.between(stopped, up)
            back["probe_reconnecting"] = probe.between(up, stopped + back["seen_by_bench_s"])
            back["memory_mb"] = publisher.memory()
            back["gc_pauses_s"] = publisher.pauses(stopped, stopped + back["seen_by_bench_s"])
            result["restart"] = back
    finally:
        subscribers.stop()
        probe.stop()
        publisher.stop()
    return result


def pooled(done: list[dict[str, Any]], subscribers: Subscribers) -> dict[str, float]:
    """Every subscriber's latency in every round, as one sample."""
    heard = subscribers.tally.heard
    samples = [at - entry["renamed"] for entry in done for at in heard[entry["value"]].values()]
    return spread(samples)


def run_mqtt(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: the same subscribers through one Mosquitto."""
    folder.mkdir(parents=True)
    broker = Mosquitto(folder / "broker", free_port(), "allow_anonymous true\n")
    broker.start()
    assert broker.process is not None
    root = make_upstream(folder / "upstream", marker="0", count=10)
    port = free_port()
    mqtt = f'[publisher.mqtt]\nurl = "{broker.url}"\n'
    config = publisher_config(folder, root, port, max(10_000, args.subscribers), mqtt)
    publisher = Publisher(config, folder / "publisher.log", port)
    subscribers = start_subscribers(
        folder,
        "mqtt",
        f"{broker.url}/{TOPIC}",
        count=args.subscribers,
        processes=args.processes,
        ramp=args.ramp,
    )
    result: dict[str, Any] = {"subscribers": args.subscribers, "processes": args.processes}
    try:
        result["broker_memory_idle_mb"] = memory_mb(broker.process.pid)
        cpu = cpu_seconds(broker.process.pid)
        result["connect_s"] = connect_all(subscribers)
        time.sleep(2.0)
        result["broker_connect_cpu_s"] = cpu_seconds(broker.process.pid) - cpu
        result["broker_memory_connected_mb"] = memory_mb(broker.process.pid)
        result["publisher_memory_mb"] = publisher.memory()
        servers = {"publisher": publisher.process.pid, "broker": broker.process.pid}
        result["rounds"] = rounds(root, subscribers, publisher, servers, args.rounds)
        result["latency"] = pooled(result["rounds"], subscribers)
        result["broker_memory_after_mb"] = memory_mb(broker.process.pid)
        result["failures"] = subscribers.tally.failures
    finally:
        subscribers.stop()
        publisher.stop()
        broker.stop()
    return result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def gc_pauses(pauses: Sequence[float]) -> str:
    """The publisher's full collections, as a table's last words."""
    if not pauses:
        return ""
    return f"; the publisher's full GC stopped it {', '.join(f'{p * 1000:.0f}' for p in pauses)} ms"


def print_latencies(title: str, result: dict[str, Any], servers: Sequence[str]) -> None:
    print(title)
    print(f"  connected and holding the current announcement in {result['connect_s']:.1f} s")
    print(
        f"  {'round':>5} {'p50':>12} {'p99':>12} {'max':>12} {'within 1 s':>11}   "
        f"CPU s: {', '.join(servers)}, subscribers, machine (all cores) to the last arrival"
    )
    for entry in result["rounds"]:
        latency = entry["latency"]
        used = ", ".join(f"{entry[f'{name}_cpu_s']:.2f}" for name in servers)
        print(
            f"  {entry['value']:>5} {ms(latency['p50'])} {ms(latency['p99'])} "
            f"{ms(latency['max'])} {latency['within']:10.2%}   {used}, "
            f"{entry['subscribers_cpu_s']:.2f}, {entry['machine_cpu_s']:.2f} in "
            f"{entry['wall_s']:.2f} s{gc_pauses(entry['publisher_gc_pauses_s'])}"
        )
    latency = result["latency"]
    print(
        f"  {'all':>5} {ms(latency['p50'])} {ms(latency['p99'])} {ms(latency['max'])} "
        f"{latency['within']:10.2%}   ({latency['n']:,} arrivals)"
    )


def print_probe(what: str, probe: dict[str, Any]) -> None:
    if not probe.get("n"):
        print(f"  /healthz {what}: no answer, failed {probe['failed']}")
        return
    print(
        f"  /healthz {what}: p50 {probe['p50'] * 1000:.1f} ms, p99 {probe['p99'] * 1000:.1f} ms, "
        f"max {probe['max'] * 1000:.1f} ms over {probe['n']} probes, "
        f"{probe['one_second_or_more']} of them ≥ 1 s; failed {probe['failed']}"
    )


def print_events(result: dict[str, Any]) -> None:
    gc = ", its cyclic GC disabled" if result["publisher_gc"] == "off" else ""
    if spread := result["reconnect_spread_s"]:
        gc += f", reconnecting over U(0, {spread:g}) s"
    print_latencies(
        f"1. event stream: {result['subscribers']:,} subscribers in {result['processes']} "
        f"processes, one publisher{gc}; rename → the subscriber holds the announcement",
        result,
        ["publisher"],
    )
    idle, connected = result["memory_idle_mb"], result["memory_connected_mb"]
    after = result["memory_after_rounds_mb"]
    print(
        f"  publisher VmRSS {idle['VmRSS']:.1f} MB idle, {connected['VmRSS']:.1f} MB with all "
        f"connected, {after['VmRSS']:.1f} MB after the rounds (VmHWM {after['VmHWM']:.1f} MB); "
        f"{result['connect_cpu_s']:.1f} s of CPU to accept them"
    )
    connecting = result["gc_pauses_connecting_s"]
    longest = max(connecting, default=0.0)
    print(
        f"  while they connected, {len(connecting)} full collections in the publisher stopped "
        f"it {sum(connecting):.2f} s in all (the longest {longest * 1000:.0f} ms)"
    )
    print_probe("while they connected", result["probe_connecting"])
    print_probe("during the rounds", result["probe_rounds"])
    if back := result.get("restart"):
        print(
            f"  restart: exited {back['exit_s']:.2f} s after SIGTERM, listening again at "
            f"{back['listening_s']:.2f} s; every subscriber reconnected and announced to by "
            f"{back['all_back_s']:.2f} s (p50 {back['announced_again']['p50']:.2f} s, p99 "
            f"{back['announced_again']['p99']:.2f} s); {back['attempts_failed']:,} connections "
            f"ended or failed in all; VmRSS after {back['memory_mb']['VmRSS']:.1f} MB "
            f"(VmHWM {back['memory_mb']['VmHWM']:.1f} MB); the kernel's ListenOverflows "
            f"+{back['listen_overflows']:,} (SYNs dropped for a full accept queue)"
        )
        pauses = back["gc_pauses_s"]
        print(
            f"  the new publisher's full collections until all were back: {len(pauses)}, "
            f"{sum(pauses):.2f} s in all (the longest {max(pauses, default=0) * 1000:.0f} ms)"
        )
        print_probe("from SIGTERM to the new one's first answer", back["probe_down"])
        print_probe("from its first answer until all were back", back["probe_reconnecting"])


def print_mqtt(result: dict[str, Any]) -> None:
    print_latencies(
        f"2. MQTT: {result['subscribers']:,} subscribers in {result['processes']} processes, "
        "one Mosquitto; rename → the subscriber holds the announcement",
        result,
        ["publisher", "broker"],
    )
    idle, connected = result["broker_memory_idle_mb"], result["broker_memory_connected_mb"]
    print(
        f"  Mosquitto VmRSS {idle['VmRSS']:.1f} MB idle, {connected['VmRSS']:.1f} MB with all "
        f"connected, {result['broker_memory_after_mb']['VmRSS']:.1f} MB after the rounds; "
        f"CPU {result['broker_connect_cpu_s']:.1f} s to accept them; publisher VmRSS "
        f"{result['publisher_memory_mb']['VmRSS']:.1f} MB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to open the streams")
    parser.add_argument("--mirror-rounds", type=int, default=15)
    parser.add_argument(
        "--publisher-gc",
        choices=["on", "off"],
        default="on",
        help="off: the event-stream publisher runs with its cyclic garbage collector disabled",
    )
    parser.add_argument(
        "--reconnect-spread",
        type=float,
        default=0.0,
        help="seconds: subscribers reconnect after U(0, this) instead of the follower's backoff",
    )
    parser.add_argument("--skip-events", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--skip-mqtt", action="store_true")
    parser.add_argument("--skip-mirrors", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Mosquitto inherits it
    document: dict[str, Any] = {
        "open_files": {"soft_before": soft, "hard": hard},
        "load_average_before": os.getloadavg(),
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mirrorhook-bench-") as temp:
        folder = Path(temp)
        if not args.skip_events:
            document["events"] = run_events(folder / "events", args)
            print_events(document["events"])
        if not args.skip_mqtt:
            document["mqtt"] = run_mqtt(folder / "mqtt", args)
            print_mqtt(document["mqtt"])
        if not args.skip_mirrors:
            document["mirrors"] = race(folder / "mirrors", args.mirror_rounds)
            print_race(document["mirrors"])
    document["run_s"] = time.monotonic() - began
    document["load_average_after"] = os.getloadavg()
    before, after = document["load_average_before"], document["load_average_after"]
    print(f"load average (1 min) {before[0]:.2f} before, {after[0]:.2f} after")
    print(f"ran {document['run_s']:.0f} s; wrote {save('subscriptions', document)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
