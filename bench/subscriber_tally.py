"""What bench.subscriptions's subscriber and probe processes report, read as they write it.

The processes (bench/subscribers.py) append a line per event to a file each; ``Tally`` reads
the files as they grow: when each subscriber was subscribed on each of its connections, when
it first held each marker value's announcement, and why connections ended. ``Probe`` reads
the ``/healthz`` probe's answers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.capacity import cpu_seconds
from tests.helpers import stop_processes

Key = tuple[int, int]
"""A subscriber: its process's number and its own within the process."""


def percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted samples (as ``stats.summary``'s p95)."""
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def spread(samples: Sequence[float], within: float = 1.0) -> dict[str, float]:
    """p50, p99, max (seconds) and the share of samples within ``within`` seconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "within": sum(sample <= within for sample in ordered) / len(ordered),
    }


@dataclass
class Tally:
    """What the subscriber processes have written so far, read as their files grow."""

    paths: list[Path]
    offsets: list[int] = field(default_factory=list)
    rests: list[str] = field(default_factory=list)
    connected: dict[Key, dict[int, float]] = field(default_factory=dict)
    """Per subscriber, when each of its connections was subscribed."""
    heard: dict[str, dict[Key, float]] = field(default_factory=dict)
    """Per marker value, when each subscriber first held its announcement."""
    heard_on: dict[Key, dict[int, float]] = field(default_factory=dict)
    """Per subscriber, its first announcement on each connection."""
    failures: dict[str, int] = field(default_factory=dict)
    """Connections that ended or could not be made, by reason."""

    def __post_init__(self) -> None:
        self.offsets = [0] * len(self.paths)
        self.rests = [""] * len(self.paths)

    def read(self) -> None:
        for number, path in enumerate(self.paths):
            if not path.exists():
                continue
            with path.open() as file:
                file.seek(self.offsets[number])
                text = self.rests[number] + file.read()
                self.offsets[number] = file.tell()
            *lines, self.rests[number] = text.split("\n")
            for line in lines:
                self._line(number, line.split(" ", 4))

    def _line(self, process: int, words: list[str]) -> None:
        key, connection = (process, int(words[1])), int(words[2])
        if words[0] == "connected":
            self.connected.setdefault(key, {})[connection] = float(words[3])
        elif words[0] == "announced":
            at = float(words[4])
            self.heard.setdefault(words[3], {}).setdefault(key, at)
            self.heard_on.setdefault(key, {}).setdefault(connection, at)
        else:
            reason = words[4] if len(words) > 4 else "?"
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def wait(self, condition: Callable[[], bool], what: str, timeout: float) -> float:
        """Read until ``condition`` holds; the wall-clock time it was seen to."""
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            if condition():
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            time.sleep(0.02)


@dataclass
class Subscribers:
    """``processes`` subscriber processes and the tally of what they wrote."""

    tally: Tally
    processes: list[subprocess.Popen[bytes]]
    count: int

    def cpu(self) -> float:
        """The CPU seconds the subscriber processes have used."""
        return sum(cpu_seconds(process.pid) for process in self.processes)

    def stop(self) -> None:
        stop_processes(self.processes)


def start_subscribers(
    folder: Path,
    kind: str,
    url: str,
    *,
    count: int,
    processes: int,
    ramp: float,
    spread: float = 0.0,
) -> Subscribers:
    outs = [folder / f"{kind}-{number}.out" for number in range(processes)]
    started = []
    for number, out in enumerate(outs):
        share = count // processes + (number < count % processes)
        command = [sys.executable, "-m", "bench.subscribers", kind, "--url", url]
        command += ["--clients", str(share), "--ramp", str(ramp), "--out", str(out)]
        command += ["--spread", str(spread)]
        started.append(subprocess.Popen(command))
    return Subscribers(Tally(outs), started, count)


@dataclass
class Probe:
    """The ``/healthz`` probe process and its answers: (start, seconds or None, status)."""

    out: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, folder: Path, port: int) -> Probe:
        out = folder / "probe.out"
        command = [sys.executable, "-m", "bench.subscribers", "probe"]
        command += ["--url", f"http://127.0.0.1:{port}/healthz", "--out", str(out)]
        return cls(out, subprocess.Popen(command))

    def answers(self) -> list[tuple[float, float | None, str]]:
        found: list[tuple[float, float | None, str]] = []
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            _, began, seconds, status = line.split(" ", 3)
            found.append((float(began), None if seconds == "-" else float(seconds), status))
        return found

    def between(self, start: float, end: float) -> dict[str, Any]:
        """The probes begun in [start, end): their latencies and how many failed."""
        window = [answer for answer in self.answers() if start <= answer[0] < end]
        ok = [seconds for _, seconds, status in window if seconds is not None and status == "200"]
        failed: dict[str, int] = {}
        for _, seconds, status in window:
            if seconds is None or status != "200":
                failed[status] = failed.get(status, 0) + 1
        slow = sum(seconds >= 1.0 for seconds in ok)
        return {**spread(ok, within=0.1), "failed": failed, "one_second_or_more": slow}

    def stop(self) -> None:
        stop_processes([self.process])
