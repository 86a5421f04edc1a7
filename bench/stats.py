"""Small helpers for benchmarks: repeated timing, median and spread, JSON results."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartile spread, min and max of ``samples`` (seconds)."""
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p25": quartiles[0],
        "p75": quartiles[2],
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def machine() -> dict[str, str]:
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True, check=True)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(len(__import__("os").sched_getaffinity(0))),
        "rsync": rsync.stdout.splitlines()[0],
    }


def save(name: str, document: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **document}, indent=2) + "\n")
    return path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"
